"""Completeness: every run yields its lifecycle once, in order, while its connection is open."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace

import orjson
import pytest

from harness.aep import decode_batch
from harness.codec import Lifecycle
from harness.oracles.lifecycle import LifecycleOracle
from harness.recording import ReceivedBatch
from harness.types import ConnectionId, ViolationKind
from tests.builders import ALICE, SCENARIO, closed, event, lifecycle, received, sent


@pytest.fixture
def oracle() -> LifecycleOracle:
    return LifecycleOracle(timeout_s=10.0, settle_s=0.0)


def feed(oracle: LifecycleOracle, objs, conn: str = "c1") -> list:
    findings = []
    for obj in objs:
        findings += oracle.on_received(received(ALICE, obj, conn=conn))
    return findings


def kinds(findings) -> list[ViolationKind]:
    return [f.kind for f in findings]


def test_a_complete_run_is_clean(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    assert feed(oracle, lifecycle(ALICE, "m1", "hi")) == []
    assert oracle.finish(now=50.0) == []
    assert oracle.completed == 1


def test_interleaved_overlapping_runs_are_clean(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    oracle.on_sent(sent(ALICE, "m2"))
    a, b = lifecycle(ALICE, "m1", "x"), lifecycle(ALICE, "m2", "y")
    for obj in b:
        obj["run_id"] = "r2"
    interleaved = [e for pair in zip(a, b, strict=True) for e in pair]
    assert feed(oracle, interleaved) == []
    assert oracle.finish(now=50.0) == []


def test_several_thinking_events_are_fine(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    extra = event(ALICE, "m1", "agent_thinking", 3)
    for later in run[2:]:
        later["seq"] += 1
    assert feed(oracle, [run[0], run[1], extra, *run[2:]]) == []
    assert oracle.finish(now=50.0) == []


def test_a_missing_middle_event_is_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    del run[3]  # tool_completed
    assert feed(oracle, run) == []
    [finding] = oracle.finish(now=50.0)
    assert finding.kind is ViolationKind.LOST_EVENT
    assert "tool_completed" in finding.detail


def test_a_run_that_never_completes_on_an_open_connection_is_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1", mono=0.0))
    feed(oracle, lifecycle(ALICE, "m1", "x")[:3])
    assert oracle.sweep(now=5.0) == []  # still within the timeout
    [finding] = oracle.sweep(now=11.0)
    assert finding.kind is ViolationKind.LOST_EVENT
    assert finding.evidence["received_types"] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
    ]


def test_a_run_cut_by_a_disconnect_is_not_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    feed(oracle, lifecycle(ALICE, "m1", "x")[:2])
    assert oracle.on_closed(closed(ALICE)) == []
    assert oracle.cut == 1
    assert oracle.finish(now=50.0) == []


@pytest.mark.parametrize(("closed_after", "lost"), [(0.5, False), (1.5, True)])
def test_a_run_missing_an_event_at_a_close_within_its_settle_period_is_cut_not_lost(
    closed_after, lost
):
    # A target that reorders a run's events (agent_completed overtook tool_completed)
    # may still have been sending the missing one when the connection closed.
    oracle = LifecycleOracle(timeout_s=10.0, settle_s=1.0)
    oracle.on_sent(sent(ALICE, "m1", mono=1.0))
    oracle.on_sent(sent(ALICE, "m2", mono=1.0))
    reordered = lifecycle(ALICE, "m1", "x")
    del reordered[3]  # tool_completed: still on its way
    whole = lifecycle(ALICE, "m2", "y")
    for obj in [*reordered, *whole]:
        oracle.on_received(replace(received(ALICE, obj), mono=5.0))
    findings = oracle.on_closed(closed(ALICE, mono=5.0 + closed_after))
    if lost:
        [finding] = findings
        assert finding.kind is ViolationKind.LOST_EVENT
        assert "without tool_completed" in finding.detail
    else:
        assert findings == []
    assert (oracle.cut, oracle.completed) == (0, 2) if lost else (1, 1)


def test_closing_a_connection_judges_its_own_runs_in_order_and_no_others(oracle):
    # c1: m1 cut mid-run, m2 lost a middle event, m3 complete; c2: one run still in flight.
    for n in (1, 2, 3):
        oracle.on_sent(sent(ALICE, f"m{n}", conn="c1", mono=float(n)))
    oracle.on_sent(sent(ALICE, "other", conn="c2", mono=4.0))
    feed(oracle, lifecycle(ALICE, "m1", "x")[:2])
    run = lifecycle(ALICE, "m2", "x")
    feed(oracle, [*run[:2], *run[3:]])
    feed(oracle, lifecycle(ALICE, "m3", "x"))
    [finding] = oracle.on_closed(closed(ALICE, conn="c1"))
    assert finding.kind is ViolationKind.LOST_EVENT
    assert finding.evidence["message_id"] == "m2"
    assert (oracle.cut, oracle.completed, oracle.in_flight) == (1, 2, 1)
    assert oracle.on_closed(closed(ALICE, conn="c1")) == []  # judged once
    feed(oracle, lifecycle(ALICE, "other", "x"), conn="c2")
    assert oracle.abandon_connection(ConnectionId("c2"), now=5.0) == []
    assert (oracle.completed, oracle.in_flight) == (3, 0)


def test_a_repeated_event_is_a_duplicate(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    assert kinds(feed(oracle, [*run[:3], run[2], *run[3:]])) == [ViolationKind.DUPLICATE_EVENT]


def test_a_second_completion_with_a_new_seq_is_a_duplicate(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    again = event(ALICE, "m1", "agent_completed", 6)
    assert kinds(feed(oracle, [*lifecycle(ALICE, "m1", "x"), again])) == [
        ViolationKind.DUPLICATE_EVENT
    ]


def test_a_second_run_for_one_message_is_a_duplicate(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    twin = event(ALICE, "m1", "agent_started", 1, run_id="r9")
    assert kinds(feed(oracle, [*run, twin])) == [ViolationKind.DUPLICATE_EVENT]


def test_events_swapped_within_a_run_are_out_of_order(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    run[2], run[3] = run[3], run[2]
    [finding] = feed(oracle, run)
    assert finding.kind is ViolationKind.OUT_OF_ORDER
    assert "tool_executing (seq 3)" in finding.detail
    assert oracle.finish(now=50.0) == []


def test_events_on_another_connection_of_the_user_are_not_judged_there(oracle):
    oracle.on_sent(sent(ALICE, "m1", conn="c1"))
    # c2 opened mid-run: it gets the rest of the run, not its beginning (AEP/1 §3).
    assert feed(oracle, lifecycle(ALICE, "m1", "x")[2:], conn="c2") == []
    feed(oracle, lifecycle(ALICE, "m1", "x"), conn="c1")
    assert oracle.finish(now=50.0) == []


def test_each_kind_is_reported_once_per_run(oracle):
    oracle.on_sent(sent(ALICE, "m1"))
    run = lifecycle(ALICE, "m1", "x")
    assert len(feed(oracle, [*run, run[1], run[2], run[3]])) == 1


def test_stopping_early_never_turns_a_slow_run_into_a_lost_one(oracle):
    oracle.on_sent(sent(ALICE, "m1", mono=0.0))
    feed(oracle, lifecycle(ALICE, "m1", "x")[:2])
    assert oracle.finish(now=3.0) == []  # interrupted 3 s in, timeout is 10 s
    assert oracle.abandoned == 1


def test_at_the_end_a_run_past_the_timeout_is_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1", mono=0.0))
    feed(oracle, lifecycle(ALICE, "m1", "x")[:2])
    [finding] = oracle.finish(now=12.0)
    assert finding.kind is ViolationKind.LOST_EVENT


def test_a_run_on_a_connection_that_heard_nothing_is_unresponsive_not_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1", mono=0.0))
    assert oracle.sweep(now=11.0) == []
    assert oracle.unresponsive == 1


def test_a_whole_run_missing_while_others_arrive_is_lost(oracle):
    oracle.on_sent(sent(ALICE, "m1", mono=0.0))
    oracle.on_sent(sent(ALICE, "m2", mono=0.0))
    feed(oracle, lifecycle(ALICE, "m2", "y"))  # the connection is alive; m1 got nothing
    [finding] = [f for f in oracle.sweep(now=11.0) if f.kind is ViolationKind.LOST_EVENT]
    assert "message m1" in finding.detail
    assert oracle.unresponsive == 0


def test_a_completed_run_in_its_settle_period_holds_under_a_kilobyte():
    # A correct run is kept for the settle period after it completes: at 20,000 runs a
    # second that is 20,000 runs at once, so what one holds is the oracle's memory. The
    # frames arrive as the transport hands them over (decoded in one batch per run), so
    # anything kept from a decoded frame is counted; the sent record and the raw text,
    # which exist anyway, are not.
    oracle = LifecycleOracle(timeout_s=10.0, settle_s=1.0)
    runs = 2000
    reads = [
        [(orjson.dumps(obj).decode(), False) for obj in lifecycle(ALICE, f"m{i}", f"note {i}")]
        for i in range(runs)
    ]
    sents = [sent(ALICE, f"m{i}", mono=i * 1e-4) for i in range(runs)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, read in enumerate(reads):
            oracle.on_sent(sents[i])
            frames, every_event = decode_batch(read)
            batch = ReceivedBatch(
                SCENARIO, ALICE, ConnectionId("c1"), i * 1e-4, 1.7e9, read, frames, every_event
            )
            assert oracle.on_batch(batch) == []
        del frames, batch
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - before) / runs
    finally:
        tracemalloc.stop()
    assert oracle.in_flight == runs  # every run completed, none settled yet
    assert held < 1024, f"{held:.0f} bytes per run"


def test_a_lifecycle_names_each_event_type_once():
    with pytest.raises(ValueError, match="must be distinct"):
        Lifecycle(("started", "step", "started"))
    with pytest.raises(ValueError, match="at least one"):
        Lifecycle(())
