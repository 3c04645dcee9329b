"""The harness against a target that misbehaves: it records the fault and carries on.

Every test drives the real transports (``WebSocketConnector``, ``AiohttpClient``)
through a :class:`~harness.scenario.Scenario` at the misbehaving target of
``tests/misbehaving_target.py`` (a separate process), and checks what any
misbehaviour must leave behind: the scenario returns in bounded time, nothing
raises out of the harness, the fault is counted in ``run.errors`` with short
evidence, no violation is reported for it (a malformed frame of the user's own
is not a violation, a run cut by a disconnect is not a lost one), and
``events.jsonl`` stays valid JSONL.
"""

from __future__ import annotations

import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from e2e_helpers import SECRET, output_of, read_summary, run_harness, seconds
from misbehaving_target import MisbehavingTarget

from harness.adapters import AdapterContext
from harness.adapters.aep import aep_via
from harness.credentials import JwtCredentials
from harness.recording import RAW_LIMIT, received_frames
from harness.run import UNRESPONSIVE, Run, Target
from harness.scenario import Scenario, Sizes, Wiring
from harness.transport.base import HttpResponse
from harness.transport.http import AiohttpClient
from harness.transport.websocket import MAX_FRAME_BYTES, WebSocketConnector
from harness.types import Verdict

EXAMPLE_LIMIT = 600
"""An error's example is clipped to 512 characters plus a marker saying how long it was."""
USERS, TENANTS, CONNECTIONS, MESSAGES = 4, 2, 2, 2
RUNS = USERS * MESSAGES


class ShortTimeoutClient(AiohttpClient):
    """The real HTTP client with every request's timeout cut to half a second."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        timeout_s: float = 10.0,
    ) -> HttpResponse:
        return await super().request(
            method, url, token=token, json_body=json_body, timeout_s=min(timeout_s, 0.5)
        )


@pytest.fixture(scope="module")
def shared_target() -> Iterator[MisbehavingTarget]:
    with MisbehavingTarget(secret=SECRET) as target:
        yield target


@pytest.fixture
def target(shared_target: MisbehavingTarget) -> Iterator[MisbehavingTarget]:
    """The module's target, reset to correct behaviour; tests switch faults on."""
    shared_target.configure()
    yield shared_target
    shared_target.configure()


ScenarioFactory = Callable[..., Scenario]


@pytest.fixture
def scenario_at(tmp_path: Path) -> Iterator[ScenarioFactory]:
    runs: list[Run] = []

    def make(
        target: MisbehavingTarget,
        *,
        lifecycle_timeout_s: float = 2.0,
        http: Callable[[], AiohttpClient] = AiohttpClient,
    ) -> Scenario:
        run = Run(
            target=Target(target.base_url, target.ws_url),
            report_dir=tmp_path / f"run{len(runs)}",
            seed=7,
            run_key=b"misbehaving-target-run-key-32byt",
            run_id="20260101T000000Z-f4u1ty",
            lifecycle_timeout_s=lifecycle_timeout_s,
        )
        runs.append(run)
        wiring = Wiring(
            context=AdapterContext(base_url=target.base_url, ws_url=target.ws_url),
            adapter=aep_via(lambda: WebSocketConnector(open_timeout_s=2.0)),
            http=http,
            credentials=JwtCredentials(SECRET),
        )
        sizes = Sizes(users=USERS, tenants=TENANTS, connections_per_user=CONNECTIONS)
        return Scenario(run, "test_target_faults", sizes=sizes, wiring=wiring)

    yield make
    for run in runs:
        run.close()


def chat(
    harness: Scenario, *, messages: int = MESSAGES, connections: int = CONNECTIONS
) -> tuple[int, float]:
    """Every user sends ``messages`` messages over ``connections`` connections.

    Returns the messages sent and the seconds it took.
    """
    users = harness.users()
    began = time.monotonic()
    sent = harness.chat(users, messages=messages, connections=connections)
    return sent, time.monotonic() - began


def errors_of(run: Run, kind: str) -> dict[str, int]:
    return {e["detail"]: e["count"] for e in run.errors.values() if e["kind"] == kind}


def assert_survived(run: Run, *, violations: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What every misbehaviour must leave behind; returns the ``events.jsonl`` lines."""
    kinds = {str(f.kind) for f in run.findings}
    assert kinds <= set(violations), [str(f) for f in run.findings[:5]]
    assert set(run.finding_counts) <= set(violations)
    assert not errors_of(run, "harness_error"), run.errors
    for entry in run.errors.values():
        assert len(entry["detail"]) <= 300, entry["detail"][:400]
        assert len(entry.get("example", "")) <= EXAMPLE_LIMIT
    run.log.flush()
    lines = [orjson.loads(line) for line in run.log.path.read_bytes().splitlines()]
    assert all(isinstance(line, dict) and line["k"] for line in lines)
    received = [raw for line in lines if line["k"] == "recv" for raw in received_frames(line)]
    assert len(received) == run.counts["events_received"]
    assert all(len(raw) <= RAW_LIMIT for raw in received)
    return lines


# -- malformed frames ------------------------------------------------------------------------

EXTRA_FRAMES = {
    "invalid_json": "not valid JSON (",
    "binary": "binary frame (",
    "json_array": "a JSON list, not an object",
    "json_number": "a JSON int, not an object",
    "missing_fields": "agent_thinking without run_id, seq, data",
    "mistyped_fields": "agent_thinking with mistyped seq, data",
}


@pytest.mark.parametrize(("fault", "reason"), EXTRA_FRAMES.items(), ids=list(EXTRA_FRAMES))
def test_a_malformed_frame_of_ones_own_is_a_protocol_error_not_a_violation(
    target, scenario_at, fault, reason
):
    target.configure(fault)
    harness = scenario_at(target)
    sent, elapsed = chat(harness)
    run = harness.run
    assert sent == RUNS
    assert elapsed < seconds(5)
    [(detail, count)] = errors_of(run, "protocol_error").items()
    assert detail.startswith(reason)
    assert count == RUNS
    assert run.counts["events_received"] == RUNS * 6  # five events and the bad frame
    assert run.runs_cut == 0
    assert_survived(run)
    harness.verify()


def test_frames_whose_type_is_not_a_name_are_counted_under_short_reasons(target, scenario_at):
    # {"type": [...]}, {"type": {...}} and a new 100 000-character type per frame.
    target.configure("odd_types")
    harness = scenario_at(target)
    sent, _ = chat(harness)
    run = harness.run
    errors = errors_of(run, "protocol_error")
    assert sent == RUNS
    assert errors.pop("unknown type ['agent_thinking']") == RUNS
    assert errors.pop("unknown type {'agent': 'thinking'}") == RUNS
    [(long_type, count)] = errors.items()
    assert count == RUNS
    assert long_type.startswith("unknown type 'qqqq")
    assert len(long_type) < 100
    assert_survived(run)


@pytest.mark.parametrize("fault", ["missing_fields_instead", "mistyped_fields_instead"])
def test_a_malformed_lifecycle_event_is_not_also_a_lost_event(target, scenario_at, fault):
    # tool_executing arrives without run_id (or with seq "3"): the target sent the
    # event, wrongly. That is one protocol error per run, not a completeness failure.
    target.configure(fault)
    harness = scenario_at(target)
    sent, _ = chat(harness)
    run = harness.run
    assert sent == RUNS
    [(detail, count)] = errors_of(run, "protocol_error").items()
    assert detail.startswith("tool_executing with")
    assert count == RUNS
    run.finish_lifecycles()
    assert_survived(run)
    assert run.runs_cut == 0


def test_a_frame_under_the_size_limit_is_kept_truncated_as_evidence(target, scenario_at):
    target.configure("large_garbage", large_size=900_000)
    harness = scenario_at(target)
    tracemalloc.start()
    try:
        sent, _ = chat(harness)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    run = harness.run
    [error] = [e for e in run.errors.values() if e["kind"] == "protocol_error"]
    assert sent == RUNS
    assert error["count"] == RUNS
    assert error["example"].startswith("<xxxx")
    assert "900000 characters in all" in error["example"]
    lines = assert_survived(run)
    big = [line for line in lines if line.get("truncated_from") == 900_000]
    assert len(big) == RUNS
    assert all(len(line["raw"]) == RAW_LIMIT for line in big)
    # Eight 900 kB frames went through; a few are alive at once, never all of them.
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_a_10_mb_frame_closes_the_connection_without_being_buffered(target, scenario_at):
    target.configure("huge_frame")
    harness = scenario_at(target)
    tracemalloc.start()
    try:
        sent, elapsed = chat(harness)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    run = harness.run
    closed = errors_of(run, "connection_closed_by_target")
    [(detail, count)] = closed.items()
    assert detail == (
        f"error (code 1009): frame with 10000002 bytes exceeds limit of {MAX_FRAME_BYTES} bytes"
    )
    assert count == USERS * CONNECTIONS
    assert sent >= USERS  # the first message of each connection at least
    assert run.runs_cut == run.counts["messages_sent"]
    assert elapsed < seconds(5)
    assert_survived(run)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 10 MB frame"


def test_invalid_utf8_in_a_text_frame_closes_1007_and_cuts_the_runs(target, scenario_at):
    target.configure("invalid_utf8")
    harness = scenario_at(target, lifecycle_timeout_s=5.0)
    _, elapsed = chat(harness, messages=4, connections=1)
    run = harness.run
    [(detail, count)] = errors_of(run, "connection_closed_by_target").items()
    assert detail.startswith("error (code 1007): invalid start byte")
    assert count == USERS
    assert errors_of(run, "send_failed")
    assert run.runs_cut == run.counts["messages_sent"] > 0
    # Messages sent on a connection the target had already broken fail at once:
    # they are not waited for, and not judged lost.
    assert elapsed < seconds(2.5)
    run.finish_lifecycles()
    assert_survived(run)


# -- floods, resets, restarts, silence -------------------------------------------------------


def test_a_flood_of_frames_is_recorded_in_bounded_memory(target, scenario_at):
    flood = 200_000
    target.configure("flood", flood_count=flood)
    harness = scenario_at(target, lifecycle_timeout_s=60.0)
    users = harness.users(1)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.monotonic()
    try:
        sent = harness.chat(users, messages=1, connections=1)
    finally:
        done.set()
        watcher.join()
    run = harness.run
    assert sent == 1
    assert run.counts["events_received"] == flood + 4
    assert time.monotonic() - began < seconds(30)
    lines = assert_survived(run)
    assert len(lines) == flood + 7  # open, sent, the frames, close
    harness.verify()
    # Per-run state does not grow with the run's events (it grew ~25 MiB here when
    # every seq and type of a run was kept).
    assert (peak[0] - baseline) < 12 * 2**20, f"RSS grew {(peak[0] - baseline) / 2**20:.0f} MiB"


def test_a_reset_mid_run_cuts_runs_and_nothing_is_lost(target, scenario_at):
    target.configure("reset", reset_after=1)
    harness = scenario_at(target, lifecycle_timeout_s=5.0)
    _, elapsed = chat(harness, messages=4, connections=1)
    run = harness.run
    assert errors_of(run, "connection_closed_by_target") == {
        "error: connection lost without a close frame": USERS
    }
    assert errors_of(run, "send_failed")
    assert run.runs_cut == run.counts["messages_sent"] > 0
    assert elapsed < seconds(2.5)  # no run on a dead connection is waited for
    run.finish_lifecycles()
    assert_survived(run)


def test_resets_while_users_disconnect_and_reconnect_are_not_violations(target, scenario_at):
    target.configure("reset", reset_after=3)
    harness = scenario_at(target, lifecycle_timeout_s=5.0)
    began = time.monotonic()
    harness.disconnect_and_reconnect(harness.users(), rounds=2)
    run = harness.run
    assert time.monotonic() - began < seconds(5)
    assert errors_of(run, "connection_closed_by_target")
    assert run.runs_cut > 0
    run.finish_lifecycles()
    assert_survived(run)


def test_a_restart_on_the_same_port_mid_run_cuts_runs_and_the_next_chat_works(scenario_at):
    with MisbehavingTarget(secret=SECRET, event_delay_s=0.4) as target:
        harness = scenario_at(target, lifecycle_timeout_s=10.0)
        users = harness.users()
        port = target.port
        restarter = threading.Timer(0.5, target.restart)
        restarter.start()
        try:
            first = harness.chat(users, messages=1, connections=1)
        finally:
            restarter.join()
        run = harness.run
        assert target.port == port
        assert first == USERS
        assert run.runs_cut == USERS
        assert errors_of(run, "connection_closed_by_target") == {
            "error: connection lost without a close frame": USERS
        }
        target.configure(event_delay_s=0.002)
        second = harness.chat(users, messages=1, connections=1)
    assert second == USERS
    assert run.counts["events_received"] >= USERS * 5
    run.finish_lifecycles()
    assert_survived(run)
    harness.verify()


def test_a_target_that_accepts_and_never_answers_is_an_error_not_a_violation(target, scenario_at):
    # Issue: "a server that accepts and then says nothing" is a target fault. Runs on
    # connections that heard nothing at all are counted as unresponsive (verdict error),
    # never as lost events, and the scenario ends once the timeout is over.
    target.configure("silent")
    harness = scenario_at(target, lifecycle_timeout_s=1.0)
    sent, elapsed = chat(harness)
    run = harness.run
    assert sent == RUNS
    assert elapsed < seconds(1.0 + 2.5)
    assert run.finding_counts == {}
    assert run.verdict() is Verdict.ERROR
    assert errors_of(run, "target_unresponsive") == {UNRESPONSIVE: RUNS}


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        ("refuse_403", "the WebSocket handshake was refused (403)"),
        ("refuse_500", "the WebSocket handshake answered 500"),
    ],
)
def test_a_refused_handshake_is_counted_per_attempt(target, scenario_at, fault, detail):
    target.configure(fault)
    harness = scenario_at(target)
    sent, elapsed = chat(harness)
    run = harness.run
    assert sent == 0
    assert errors_of(run, "connect_failed") == {detail: USERS * CONNECTIONS * 3}
    assert elapsed < seconds(5)
    assert_survived(run)


# -- HTTP ------------------------------------------------------------------------------------


def test_http_5xx_answers_are_counted_and_probes_stay_inconclusive(target, scenario_at):
    target.configure("http_5xx")
    harness = scenario_at(target)
    users = harness.users()
    harness.write_state(users, "profile")
    harness.read_state_together(users, "profile", bursts=2)
    harness.probe_other_users(users, per_user=1)
    run = harness.run
    requests = target.stats()["api_requests"]
    assert sum(errors_of(run, "http_5xx").values()) == requests == run.counts["http_probes"]
    assert set(errors_of(run, "http_5xx")) == {
        "PUT api answered 503",
        "GET api answered 503",
    }
    assert run.probe_outcomes == {"inconclusive": USERS * 2}
    assert_survived(run)


def test_http_answers_slower_than_the_timeout_are_counted_and_not_waited_for(target, scenario_at):
    target.configure("slow_http", slow_s=3.0)
    harness = scenario_at(target, http=ShortTimeoutClient)
    users = harness.users()
    began = time.monotonic()
    harness.write_state(users, "profile")
    harness.read_state_together(users, "profile", bursts=1)
    run = harness.run
    assert time.monotonic() - began < seconds(2.5)
    assert errors_of(run, "http_failed") == {
        "PUT /api/state/profile: PUT got no answer within 0.5s": USERS,
        "GET /api/state/profile: GET got no answer within 0.5s": USERS,
    }
    assert run.counts["http_probes"] == 0
    assert_survived(run)


# -- the command line ------------------------------------------------------------------------

UNUSABLE = re.compile(r"isoharness: (error: )?target \S+ is unusable: (?P<reason>[^!\n]+)")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("refuse_403", "the WebSocket handshake was refused (403)"),
        ("refuse_500", "the WebSocket handshake answered 500"),
        ("silent", "no pong or agent_started within 1s of a ping and a user_message"),
        ("stopped", "cannot connect: "),
        ("close_4401", "the WebSocket was accepted, then closed with 4401 (unauthorized)"),
    ],
)
def test_the_cli_exits_3_with_one_line_when_the_target_is_unusable_from_the_start(
    tmp_path, fault, reason
):
    with MisbehavingTarget(*([] if fault == "stopped" else [fault]), secret=SECRET) as target:
        if fault == "stopped":
            target.kill()
        began = time.monotonic()
        proc = run_harness(
            "run",
            "--target-url",
            target.base_url,
            "--lifecycle-timeout",
            "1",
            "--users",
            "2",
            "--report-dir",
            str(tmp_path / "report"),
            cwd=tmp_path,
            timeout_s=60,
        )
    assert proc.returncode == 3, output_of(proc)
    assert time.monotonic() - began < seconds(20)
    output = proc.stdout + proc.stderr
    matches = [m for line in output.splitlines() if (m := UNUSABLE.search(line))]
    assert len(matches) == 1, output_of(proc)
    assert matches[0]["reason"].strip().startswith(reason), output_of(proc)
    summary = read_summary(tmp_path / "report")
    assert summary["verdict"] == "error"
    assert summary["violation_counts"] == {}
    assert [e["kind"] for e in summary["errors"]] == ["target_unusable"]
    for line in (tmp_path / "report" / "events.jsonl").read_bytes().splitlines():
        assert isinstance(orjson.loads(line), dict)
