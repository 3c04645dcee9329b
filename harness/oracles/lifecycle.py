"""``lost_event``, ``duplicate_event``, ``out_of_order``: each run's lifecycle, exactly.

AEP/1 §4 Completeness: while the connection stays open, every accepted
message yields exactly its five events (``agent_thinking`` one or more), none
twice, in order (§3). Completeness is judged on the connection that sent the
message, for as long as it stays open: a run cut by a disconnect is counted as
cut, never as lost.

The tracker is a small state machine fed records as they arrive; it keeps
state only for runs in flight (plus a short settle period after completion,
to catch late duplicates), so its memory is bounded by the concurrency, not
by the length of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.aep import LIFECYCLE, PHASE, REPEATABLE, Event
from harness.findings import Finding
from harness.oracles.witness import clip, iso_time
from harness.recording import Closed, Received, Sent
from harness.types import ConnectionId, ViolationKind

SINGULAR = tuple(name for name in LIFECYCLE if name not in REPEATABLE)


@dataclass(slots=True)
class _Run:
    sent: Sent
    seqs: set[int] = field(default_factory=set)
    max_seq: int = 0
    max_phase: int = -1
    types: list[str] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    completed_at: float | None = None
    reported: set[ViolationKind] = field(default_factory=set)
    last_raw: str = ""


class LifecycleOracle:
    """Judges every run on the connection that started it.

    Args:
        timeout_s: how long a run may take before a missing end is a lost
            event (AEP/1 §5: a correct service may take seconds under load).
        settle_s: how long a completed run is kept to catch late duplicates.
        seed: the run's seed, put in every witness.
    """

    def __init__(self, *, timeout_s: float, settle_s: float = 1.0, seed: int = 0) -> None:
        self._timeout = timeout_s
        self._settle = settle_s
        self._seed = seed
        self._runs: dict[tuple[ConnectionId, str], _Run] = {}
        self.completed = 0
        self.cut = 0
        self.abandoned = 0

    @property
    def in_flight(self) -> int:
        """Runs started and not yet judged."""
        return len(self._runs)

    def on_sent(self, rec: Sent) -> None:
        self._runs[(rec.connection, rec.message_id)] = _Run(rec)

    def on_received(self, rec: Received) -> list[Finding]:
        """Check one frame; returns duplicate/out-of-order findings at once."""
        event = rec.frame
        if not isinstance(event, Event):
            return []
        run = self._runs.get((rec.connection, event.message_id))
        if run is None:
            return []
        run.last_raw = rec.raw
        findings: list[Finding] = []
        phase = PHASE[event.type]
        if event.run_id not in run.run_ids and run.run_ids:
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"message {event.message_id} started a second run "
                f"({event.run_id!r} after {sorted(run.run_ids)!r})",
                rec,
            )
        elif event.seq in run.seqs:
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"{event.type} (seq {event.seq}) of message {event.message_id} "
                f"received twice on {rec.connection}",
                rec,
            )
        elif event.type in SINGULAR and event.type in run.types:
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"{event.type} of message {event.message_id} received twice on {rec.connection}",
                rec,
            )
        elif event.seq < run.max_seq or phase < run.max_phase:
            findings += self._flag(
                run,
                ViolationKind.OUT_OF_ORDER,
                f"{event.type} (seq {event.seq}) of message {event.message_id} arrived after "
                f"{run.types[-1]} (seq {run.max_seq}) on {rec.connection}",
                rec,
            )
        run.run_ids.add(event.run_id)
        run.seqs.add(event.seq)
        run.max_seq = max(run.max_seq, event.seq)
        run.max_phase = max(run.max_phase, phase)
        run.types.append(event.type)
        if event.type == "agent_completed" and run.completed_at is None:
            run.completed_at = rec.mono
        return findings

    def on_closed(self, rec: Closed) -> list[Finding]:
        """Judge the runs of a closed connection: unfinished ones were cut, not lost."""
        findings: list[Finding] = []
        for key in [k for k in self._runs if k[0] == rec.connection]:
            run = self._runs.pop(key)
            if run.completed_at is None:
                self.cut += 1
            else:
                findings += self._judge(run, now=rec.mono)
        return findings

    def sweep(self, now: float) -> list[Finding]:
        """Judge runs that completed over ``settle_s`` ago or are past the timeout."""
        findings: list[Finding] = []
        for key, run in list(self._runs.items()):
            settled = run.completed_at is not None and now - run.completed_at >= self._settle
            expired = run.completed_at is None and now - run.sent.mono >= self._timeout
            if settled or expired:
                del self._runs[key]
                findings += self._judge(run, now=now)
        return findings

    def finish_connection(self, connection: ConnectionId, now: float) -> list[Finding]:
        """Judge the runs of ``connection`` as if it stayed open (call before closing it)."""
        findings: list[Finding] = []
        for key in [k for k in self._runs if k[0] == connection]:
            findings += self._judge(self._runs.pop(key), now=now)
        return findings

    def abandon_connection(self, connection: ConnectionId, now: float) -> list[Finding]:
        """Stop tracking ``connection`` early: finished runs are judged, unfinished ones
        are counted as abandoned (neither lost nor complete: not waited for long enough)."""
        findings: list[Finding] = []
        for key in [k for k in self._runs if k[0] == connection]:
            run = self._runs.pop(key)
            if run.completed_at is None:
                self.abandoned += 1
            else:
                findings += self._judge(run, now=now)
        return findings

    def finish(self, now: float) -> list[Finding]:
        """Judge every remaining run (the end of the run, or an interrupt).

        Completed runs are judged; an unfinished run is lost only once it is
        past the timeout, otherwise it is counted as abandoned: stopping early
        never turns a slow run into a lost one.
        """
        findings: list[Finding] = []
        for run in self._runs.values():
            if run.completed_at is None and now - run.sent.mono < self._timeout:
                self.abandoned += 1
            else:
                findings += self._judge(run, now=now)
        self._runs.clear()
        return findings

    def _judge(self, run: _Run, *, now: float) -> list[Finding]:
        mid = run.sent.message_id
        if run.completed_at is None:
            got = ", ".join(run.types) or "nothing"
            waited = now - run.sent.mono
            return self._flag(
                run,
                ViolationKind.LOST_EVENT,
                f"message {mid} got no agent_completed on {run.sent.connection} "
                f"within {waited:.1f}s while the connection stayed open (received: {got})",
                None,
            )
        self.completed += 1
        missing = [name for name in SINGULAR if name not in run.types]
        if "agent_thinking" not in run.types:
            missing.append("agent_thinking")
        gaps = sorted(set(range(1, run.max_seq + 1)) - run.seqs)
        if missing or gaps:
            what = ", ".join(missing) if missing else f"seq {', '.join(map(str, gaps))}"
            return self._flag(
                run,
                ViolationKind.LOST_EVENT,
                f"run of message {mid} completed without {what} on {run.sent.connection}",
                None,
            )
        return []

    def _flag(
        self, run: _Run, kind: ViolationKind, detail: str, rec: Received | None
    ) -> list[Finding]:
        if kind in run.reported:
            return []
        run.reported.add(kind)
        sent = run.sent
        evidence: dict[str, Any] = {
            "connection": sent.connection,
            "message_id": sent.message_id,
            "thread_id": sent.thread_id,
            "sent_at": iso_time(sent.wall),
            "sent_mono": round(sent.mono, 6),
            "received_types": list(run.types),
            "seed": self._seed,
        }
        if rec is not None:
            evidence |= {
                "raw": clip(rec.raw),
                "received_at": iso_time(rec.wall),
                "received_mono": round(rec.mono, 6),
            }
        elif run.last_raw:
            evidence["last_raw"] = clip(run.last_raw)
        return [
            Finding(
                kind=kind,
                scenario=sent.scenario,
                victim=sent.sender,
                owner=sent.sender,
                detail=detail,
                evidence=evidence,
            )
        ]
