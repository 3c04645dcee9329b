"""The harness's own memory stays flat however long it runs.

The harness judges the target's memory with
:func:`~harness.oracles.memory_growth.decide_memory_growth`; here the same
decision is turned on the harness itself. A :class:`~harness.run.Run` with a
real ``events.jsonl`` is fed long streams of records in batches, the Python
heap (``tracemalloc``) is sampled after each batch, and memory against work
done must not grow significantly. A positive control (a sink that keeps a
little of every connection) shows the same measurement does see a leak.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from harness.aep import parse_frame
from harness.oracles.memory_growth import GrowthDecision, MemorySample, decide_memory_growth
from harness.recording import Clock, Closed, HttpExchange, Opened, Received, Record, Sent
from harness.run import Run, Target
from harness.transport.memory import MemoryConnector, ServerSide
from harness.types import ConnectionId, ScenarioId, TenantId, UserId, UserKey
from harness.users import SimUser, UserConnection, make_identity

SCENARIO = ScenarioId("tests/test_harness_memory.py::soak")
KINDS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
USERS = [UserKey(TenantId(f"t{n % 5}"), UserId(f"u{n // 5}")) for n in range(50)]


class TickingClock(Clock):
    """A clock that advances a fixed step each time it is read.

    What a run keeps for a while after a run completes (the lifecycle's settle
    period) is bounded by time, not by count: on the real clock its size follows
    how fast this machine happens to be going, and that noise is of the size of
    the leaks these tests must see. Counted time keeps it the same every batch.
    """

    def __init__(self, step_s: float = 0.001) -> None:
        super().__init__()
        self.step_s = step_s
        self.ticks = 0

    def mono(self) -> float:
        self.ticks += 1
        return self.ticks * self.step_s


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    run = Run(
        target=Target("memory://", "memory://ws"),
        report_dir=tmp_path,
        seed=11,
        run_key=b"harness-memory-run-key-of-32-by.",
        run_id="20260101T000000Z-h4rn3s",
        lifecycle_timeout_s=600.0,  # no run here may expire while the test is running
    )
    run.clock = TickingClock()
    yield run
    run.close()


def event(owner: UserKey, message_id: str, kind: str, seq: int, text: str) -> str:
    return orjson.dumps(
        {
            "type": kind,
            "user_id": owner.user,
            "tenant_id": owner.tenant,
            "thread_id": "main",
            "message_id": message_id,
            "run_id": f"r-{message_id}",
            "seq": seq,
            "data": {"thought": text},
        }
    ).decode()


def session(run: Run, n: int) -> Iterator[Record]:
    """One short connection: open, two overlapping runs, odd frames now and then, close."""
    user = USERS[n % len(USERS)]
    canary = run.canaries.canary_for(user)
    conn = ConnectionId(f"c{n}")
    clock = run.clock
    yield Opened(SCENARIO, user, conn, clock.mono(), clock.wall(), n >= len(USERS))
    ids = [f"{canary}-m{n}-{k}" for k in range(2)]
    for message_id in ids:
        yield Sent(SCENARIO, user, conn, clock.mono(), clock.wall(), message_id, "main")
    for seq, kind in enumerate(KINDS, 1):
        for message_id in ids:
            raw = event(user, message_id, kind, seq, f"{canary} note {n}")
            yield Received(SCENARIO, user, conn, clock.mono(), clock.wall(), raw, parse_frame(raw))
    if n % 7 == 0:
        raw = '{"type": "error", "code": "bad_request", "message": "no"}'
        yield Received(SCENARIO, user, conn, clock.mono(), clock.wall(), raw, parse_frame(raw))
    if n % 11 == 0:
        raw = f"not json {n}"
        yield Received(SCENARIO, user, conn, clock.mono(), clock.wall(), raw, parse_frame(raw))
    if n % 13 == 0:
        body = orjson.dumps({"key": "profile", "value": canary, "user_id": user.user}).decode()
        now = clock.mono()
        path = "/api/state/profile"
        yield HttpExchange(SCENARIO, user, "GET", path, 200, body, now, now, clock.wall(), "read")
    # Every third connection is dropped by the target with its second run unfinished.
    initiator = "error" if n % 3 == 0 else "client"
    yield Closed(SCENARIO, user, conn, clock.mono(), clock.wall(), initiator, None, "", 0)


def measure(
    feed: Callable[[int], int], *, batches: int, warmup: int = 3
) -> tuple[list[MemorySample], float]:
    """Call ``feed(batch)`` ``batches`` times; the heap after each, against work done."""
    samples: list[MemorySample] = []
    done = 0
    began = time.monotonic()
    gc.collect()
    tracemalloc.start()
    try:
        for batch in range(batches):
            done += feed(batch)
            gc.collect()
            if batch >= warmup:
                current, _ = tracemalloc.get_traced_memory()
                samples.append(MemorySample(time.monotonic() - began, done, current))
    finally:
        tracemalloc.stop()
    return samples, time.monotonic() - began


async def measure_async(
    feed: Callable[[], Awaitable[int]], *, batches: int, warmup: int = 3
) -> tuple[list[MemorySample], float]:
    """:func:`measure` for work that must run inside the event loop."""
    samples: list[MemorySample] = []
    done = 0
    began = time.monotonic()
    gc.collect()
    tracemalloc.start()
    try:
        for batch in range(batches):
            done += await feed()
            gc.collect()
            if batch >= warmup:
                current, _ = tracemalloc.get_traced_memory()
                samples.append(MemorySample(time.monotonic() - began, done, current))
    finally:
        tracemalloc.stop()
    return samples, time.monotonic() - began


def decide(samples: list[MemorySample], floor: float) -> GrowthDecision:
    return decide_memory_growth(samples, floor_bytes_per_session=floor, seed=5)


def feed_sessions(
    run: Run, record: Callable[[Record], None], *, connections: int
) -> Callable[[int], int]:
    """A batch: ``connections`` sessions recorded with ``record``, then a sweep."""

    def feed(batch: int) -> int:
        records = 0
        first = batch * connections
        for n in range(first, first + connections):
            for rec in session(run, n):
                record(rec)
                records += 1
        run.sweep()
        return records

    return feed


def test_a_run_fed_a_long_stream_of_short_connections_stays_flat(run):
    samples, _ = measure(feed_sessions(run, run.record, connections=400), batches=36)
    records = samples[-1].sessions
    assert records > 200_000
    # 1 byte per record is ~16 bytes per connection: any per-connection entry kept
    # forever (a dict slot, a set entry, a run) is well above it.
    decision = decide(samples, floor=1.0)
    assert not decision.significant, f"{records:,} records: {decision.detail}"
    assert not run.findings, [str(f) for f in run.findings[:3]]
    assert run.counts["events_received"] > 140_000
    assert len(run.errors) <= 3


def test_the_measurement_sees_a_leak_of_a_few_bytes_per_connection(run):
    kept: list[object] = []

    def leaky(rec: Record) -> None:
        run.record(rec)
        if isinstance(rec, Closed):
            kept.append(rec.connection)  # ~60 bytes per connection, ~4 per record

    samples, _ = measure(feed_sessions(run, leaky, connections=150), batches=14)
    assert decide(samples, floor=1.0).significant


def test_one_run_that_never_stops_thinking_holds_constant_state(run):
    # AEP/1 §3: agent_thinking "one or more" times; a chatty agent is conforming.
    owner = USERS[0]
    canary = run.canaries.canary_for(owner)
    conn, message_id = ConnectionId("c1"), f"{canary}-m1"
    clock = run.clock
    run.record(Opened(SCENARIO, owner, conn, clock.mono(), clock.wall()))
    run.record(Sent(SCENARIO, owner, conn, clock.mono(), clock.wall(), message_id, "main"))
    seqs = iter(range(1, 10**9))
    per_batch = 1_500

    def feed(batch: int) -> int:
        for _ in range(per_batch):
            seq = next(seqs)
            kind = "agent_started" if seq == 1 else "agent_thinking"
            raw = event(owner, message_id, kind, seq, "hmm")
            run.record(Received(SCENARIO, owner, conn, 0.0, 0.0, raw, parse_frame(raw)))
        return per_batch

    samples, _ = measure(feed, batches=16)
    assert not decide(samples, floor=1.0).significant
    for seq, kind in enumerate(KINDS[2:], next(seqs)):
        raw = event(owner, message_id, kind, seq, "done")
        run.record(Received(SCENARIO, owner, conn, 0.0, 0.0, raw, parse_frame(raw)))
    run.judge_connection(conn)
    assert not run.findings, [str(f) for f in run.findings]


class CountingSink:
    """Takes records and keeps none: what is measured is the connection's own state."""

    def __init__(self) -> None:
        self.records = 0

    def record(self, rec: Record) -> None:
        self.records += 1


def test_a_long_lived_connection_does_not_keep_its_finished_runs(run):
    owner = USERS[0]
    user = SimUser(
        make_identity(owner, seed=1),
        token=str(owner),
        canary=run.canaries.canary_for(owner),
        rng=random.Random(1),
    )
    sink = CountingSink()

    async def agent(server: ServerSide) -> None:
        while (text := await server.recv()) is not None:
            message_id = orjson.loads(text)["message_id"]
            for seq, kind in enumerate(KINDS, 1):
                await server.send(event(owner, message_id, kind, seq, ""))

    async def drive() -> list[MemorySample]:
        connector = MemoryConnector(agent)
        channel = await connector.connect("memory://ws", token=str(owner))
        conn = UserConnection(
            user,
            channel,
            connection_id=ConnectionId("c1"),
            scenario=SCENARIO,
            sink=sink,
            clock=run.clock,
        )

        async def batch() -> int:
            pending = [await conn.send_message("main") for _ in range(250)]
            await asyncio.wait([p.done for p in pending], timeout=10)
            assert all(p.outcome is not None for p in pending)
            return len(pending)

        try:
            samples, _ = await measure_async(batch, batches=16)
        finally:
            await conn.close()
            await asyncio.gather(*connector.tasks)
        return samples

    samples = asyncio.run(drive())
    assert sink.records == 1 + 16 * 250 * 6 + 1  # opened, sent and five events each, closed
    decision = decide(samples, floor=16.0)
    assert not decision.significant, decision.detail
