"""Canaries: unguessable per user, recomputable with the run key, found anywhere in text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harness.canary import CANARY_RE, CanaryBook, mint_canary
from tests.builders import ALICE, BOB, EVE


def test_each_user_has_its_own_canary_even_with_the_same_sub():
    book = CanaryBook(b"k" * 32)
    assert len({book.canary_for(u) for u in (ALICE, BOB, EVE)}) == 3


def test_canaries_depend_on_the_run_key():
    assert mint_canary(b"a" * 32, ALICE) != mint_canary(b"b" * 32, ALICE)


def test_another_process_with_the_run_key_attributes_the_same_canary():
    canary = CanaryBook(b"k" * 32).canary_for(ALICE)
    other = CanaryBook(b"k" * 32)
    other.register([ALICE, BOB])
    assert other.owner_of(canary) == ALICE


def test_find_reports_each_known_canary_once():
    book = CanaryBook(b"k" * 32)
    a, b = book.canary_for(ALICE), book.canary_for(BOB)
    text = f'{{"x": "{a}", "y": ["{b}-m1", "{a}"], "z": "iso{"a" * 16}"}}'
    assert sorted(book.find(text)) == sorted([(a, ALICE), (b, BOB)])


def test_canaries_survive_json_escaping():
    canary = CanaryBook(b"k" * 32).canary_for(ALICE)
    assert CANARY_RE.fullmatch(canary)
    assert canary == canary.encode("unicode_escape").decode()


@given(st.text(), st.text())
def test_a_planted_canary_is_always_found(prefix, suffix):
    book = CanaryBook(b"k" * 32)
    canary = book.canary_for(ALICE)
    assert (canary, ALICE) in list(book.find(prefix + canary + suffix))
