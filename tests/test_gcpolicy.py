"""The collector runs less often inside ``fewer_collections``, and as before once it ends."""

from __future__ import annotations

import gc

import pytest

from harness.gcpolicy import GC_YOUNG_THRESHOLD, fewer_collections


@pytest.fixture
def default_threshold():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_the_young_threshold_is_raised_in_the_block_and_restored_after(default_threshold):
    with fewer_collections():
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_blocks_restore_the_threshold_the_first_one_found(default_threshold):
    with fewer_collections():
        with fewer_collections():
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)


def test_an_error_in_the_block_still_restores_the_threshold(default_threshold):
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_set_by_the_caller_is_kept(default_threshold):
    gc.set_threshold(100_000, 10, 10)
    with fewer_collections():
        assert gc.get_threshold()[0] == 100_000
    assert gc.get_threshold()[0] == 100_000


def test_cyclic_garbage_made_in_the_block_is_still_collected(default_threshold):
    class Node:
        pass

    with fewer_collections():
        for _ in range(3 * GC_YOUNG_THRESHOLD):
            a, b = Node(), Node()
            a.other, b.other = b, a  # type: ignore[attr-defined]
        # Each pair is garbage once the loop moves on; the collector frees them
        # at the raised threshold: far fewer than were made are still alive.
        alive = sum(1 for obj in gc.get_objects() if type(obj) is Node)
    assert alive < 2 * GC_YOUNG_THRESHOLD
