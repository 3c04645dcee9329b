"""Agent runs: the five lifecycle events of one accepted message (AEP/1 §3).

:func:`lifecycle_events` is pure (spec in, event objects out). A
:class:`Runner` plays the events with think time between them and hands each
to a :class:`Publisher`, which looks up the owner's connections **at the
moment of sending**: a run outlives the connection that started it, and a
connection opened mid-run gets the rest of the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.reference.auth import Identity
from harness.reference.connections import ConnectionRegistry
from harness.reference.metrics import Metrics
from harness.reference.protocol import encode

log = logging.getLogger(__name__)

Event = dict[str, Any]
MAX_THOUGHTS = 3


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One accepted message: what its run needs to know."""

    owner: Identity
    thread_id: str
    message_id: str
    content: str
    run_id: str
    #: The owner's message ids in the thread, this one included, fixed at acceptance.
    history: tuple[str, ...]


def lifecycle_events(spec: RunSpec, *, thoughts: int) -> list[Event]:
    """The run's events in order, ``seq`` 1, 2, 3 …, with ``thoughts`` ``agent_thinking``s."""
    content = spec.content
    steps: list[tuple[str, dict[str, Any]]] = [("agent_started", {})]
    steps += [
        ("agent_thinking", {"thought": f"step {i} of {thoughts}: considering {content}"})
        for i in range(1, thoughts + 1)
    ]
    steps += [
        ("tool_executing", {"tool": "echo", "input": content}),
        ("tool_completed", {"tool": "echo", "output": content}),
        ("agent_completed", {"result": content, "history": list(spec.history)}),
    ]
    return [
        {
            "type": kind,
            "user_id": spec.owner.sub,
            "tenant_id": spec.owner.tenant,
            "thread_id": spec.thread_id,
            "message_id": spec.message_id,
            "run_id": spec.run_id,
            "seq": seq,
            "data": data,
        }
        for seq, (kind, data) in enumerate(steps, start=1)
    ]


class ThinkTime:
    """The simulated model latency between two events: uniform in [min, max] seconds."""

    def __init__(self, min_ms: int, max_ms: int, rng: random.Random) -> None:
        self.min_s = min_ms / 1000
        self.max_s = max_ms / 1000
        self._rng = rng

    @property
    def median_s(self) -> float:
        """The median delay."""
        return (self.min_s + self.max_s) / 2

    def delay(self) -> float:
        """One delay, in seconds."""
        return self._rng.uniform(self.min_s, self.max_s)


class Publisher:
    """Sends an event to the connections its owner has open now."""

    def __init__(
        self, registry: ConnectionRegistry, *, encode_event: Callable[[Event], str] = encode
    ) -> None:
        self._registry = registry
        #: Writes an event in the wire dialect (``--dialect``).
        self._encode = encode_event

    def publish(self, owner: Identity, event: Event) -> None:
        """Fan ``event`` out to ``owner``'s open connections."""
        frame = self._encode(event)
        # AEP/1 §4: an event of user A's run is never sent on a connection of user B.
        for conn in self._registry.connections_of(owner):
            conn.send(frame, event=True)

    async def aclose(self) -> None:
        """Finish background work (none here)."""


class Runner:
    """Starts runs as tasks and keeps ``aep_runs_active`` equal to the unfinished ones."""

    def __init__(
        self, publisher: Publisher, think: ThinkTime, metrics: Metrics, rng: random.Random
    ) -> None:
        self._publisher = publisher
        self._think = think
        self._metrics = metrics
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, spec: RunSpec) -> asyncio.Task[None]:
        """Start the run of an accepted message; it runs to its end whoever disconnects."""
        task = asyncio.create_task(self._guarded(spec), name=f"run-{spec.run_id}")
        self._tasks.add(task)
        self._metrics.runs_active.inc()
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._metrics.runs_active.dec()

    async def _guarded(self, spec: RunSpec) -> None:
        try:
            await self._run(spec)
        except Exception:
            log.exception("run %s of %s failed", spec.run_id, spec.owner)

    def _events(self, spec: RunSpec) -> list[Event]:
        return lifecycle_events(spec, thoughts=self._rng.randint(1, MAX_THOUGHTS))

    async def _run(self, spec: RunSpec) -> None:
        for event in self._events(spec):
            await asyncio.sleep(self._think.delay())
            self._publisher.publish(spec.owner, event)

    async def aclose(self) -> None:
        """Cancel the runs still in progress (service shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
