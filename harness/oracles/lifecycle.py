"""``lost_event``, ``duplicate_event``, ``out_of_order``: each run's lifecycle, exactly.

AEP/1 §4 Completeness: while the connection stays open, every accepted
message yields exactly its five events (``agent_thinking`` one or more), none
twice, in order (§3). Completeness is judged on the connection that sent the
message, for as long as it stays open: a run cut by a disconnect is counted as
cut, never as lost. A malformed frame that names a run stands in for the event
it was meant to be: it is a protocol error (counted in the run's errors), not
also a lost event.

Other protocols bring their own :class:`~harness.codec.Lifecycle` (one event
per message, or a chain of them); an event with ``seq`` ``None`` (a protocol
without sequence numbers) is judged by its type alone.

The tracker is a small state machine fed records as they arrive; it keeps
state only for runs in flight (plus a short settle period after completion,
to catch late duplicates), so its memory is bounded by the concurrency, not
by the length of the run.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Set as AbstractSet
from typing import Any, cast

from harness.aep import AEP_LIFECYCLE, Event, Malformed
from harness.codec import Lifecycle
from harness.findings import Finding
from harness.oracles.witness import EVIDENCE_RAW_LIMIT, clip, iso_time
from harness.recording import Closed, Received, ReceivedBatch, Sent
from harness.types import ConnectionId, ViolationKind

TYPES_KEPT = 64
"""Event types of a run kept for the evidence; a run may send any number of thoughts."""
_EMPTY: frozenset[Any] = frozenset()


class _Run:
    """What the oracle holds for one run in flight.

    Memory per run is bounded however many events the target sends for it:
    in-order seqs fold into ``prefix``, types into the bits of ``kinds`` and
    ``last``. A run is made per message sent and a correct one lives on for
    the settle period, so it holds no container it does not need: the types
    kept are the lifecycle's own strings (not the decoded frame's copies), and
    the sets a correct run never fills (out-of-order seqs, run ids after the
    first, reported violations, malformed events) start as one shared empty
    set and are made on first use.
    """

    __slots__ = (
        "sent",
        "key",
        "prefix",
        "seqs",
        "max_seq",
        "max_phase",
        "types",
        "kinds",
        "last",
        "events",
        "run_id",
        "more_run_ids",
        "completed_at",
        "reported",
        "last_raw",
        "malformed",
        "malformed_count",
    )

    def __init__(self, sent: Sent, key: tuple[ConnectionId, str]) -> None:
        self.sent = sent
        self.key = key  # (connection, message id): the run's key in the oracle
        self.prefix = 0  # every seq in 1..prefix was received
        self.seqs: AbstractSet[int] = _EMPTY  # the other seqs received
        self.max_seq = 0
        self.max_phase = -1
        self.types: list[str] = []  # the first TYPES_KEPT
        self.kinds = 0  # bit 1 << phase set for every type received
        self.last = "nothing"
        self.events = 0
        self.run_id: str | None = None  # the first run id received
        self.more_run_ids: AbstractSet[str] = _EMPTY  # up to three more
        self.completed_at: float | None = None
        self.reported: AbstractSet[ViolationKind] = _EMPTY
        self.last_raw = ""
        self.malformed: AbstractSet[str] = _EMPTY
        self.malformed_count = 0

    def has_seq(self, seq: int) -> bool:
        return 1 <= seq <= self.prefix or seq in self.seqs

    @property
    def run_ids(self) -> set[str]:
        """The run ids received (the first four)."""
        return set() if self.run_id is None else {self.run_id, *self.more_run_ids}

    def has_run_id(self, run_id: str) -> bool:
        return run_id == self.run_id or run_id in self.more_run_ids

    def add(self, event: Event, phase: int, name: str) -> None:
        """Fold in ``event``, of type ``name`` (the lifecycle's string) at ``phase``."""
        if event.seq is not None and not self.has_seq(event.seq):
            seqs = self.seqs
            if not isinstance(seqs, set):
                seqs = self.seqs = set()
            seqs.add(event.seq)
            while self.prefix + 1 in seqs:
                self.prefix += 1
                seqs.remove(self.prefix)
        run_id = event.run_id
        if self.run_id is None:
            self.run_id = run_id
        elif not self.has_run_id(run_id) and len(self.more_run_ids) < 3:
            if not isinstance(self.more_run_ids, set):
                self.more_run_ids = set()
            self.more_run_ids.add(run_id)
        self.kinds |= 1 << phase
        self.last = name
        self.events += 1
        if len(self.types) < TYPES_KEPT:
            self.types.append(name)

    def received_types(self) -> list[str]:
        more = self.events - len(self.types)
        return self.types + [f"… {more} more"] if more else list(self.types)


class LifecycleOracle:
    """Judges every run on the connection that started it.

    Args:
        timeout_s: how long a run may take before a missing end is a lost
            event (AEP/1 §5: a correct service may take seconds under load).
        settle_s: how long a completed run is kept to catch late duplicates.
        seed: the run's seed, put in every witness.
        lifecycle: the events one message causes (default: AEP/1's five).
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        settle_s: float = 1.0,
        seed: int = 0,
        lifecycle: Lifecycle = AEP_LIFECYCLE,
    ) -> None:
        self.lifecycle = lifecycle
        self._phase = lifecycle.phase
        self._singular = lifecycle.singular  # in order, for messages
        self._names = lifecycle.events  # phase → the type's name
        self._singular_bits = sum(1 << self._phase[name] for name in self._singular)
        self._repeatable = tuple(name for name in lifecycle.events if name in lifecycle.repeatable)
        self._terminal = lifecycle.terminal
        self._every_kind = sum(1 << phase for phase in set(self._phase.values()))
        self._timeout = timeout_s
        self._settle = settle_s
        self._seed = seed
        self._runs: dict[tuple[ConnectionId, str], _Run] = {}
        # The keys of each connection's runs, in the order of _runs (a dict as an
        # ordered set): closing a connection judges its runs without a walk
        # through every run in flight.
        self._keys: dict[ConnectionId, dict[tuple[ConnectionId, str], None]] = {}
        self.completed = 0
        self.cut = 0
        self.abandoned = 0
        #: Runs that got nothing while their connection heard nothing at all: the
        #: target stopped answering (a target fault), not an event lost among others.
        self.unresponsive = 0
        self._heard: dict[ConnectionId, float] = {}
        # Completed runs in the order they completed, so a sweep judges the settled
        # ones from the front instead of walking every run in flight; valid while
        # records come in time order (live runs; a test may feed any). A run judged
        # early (its connection closed) stays here until its settle period is over.
        self._settling: deque[_Run] = deque()
        self._in_order = True
        self._last_sent = -math.inf

    @property
    def in_flight(self) -> int:
        """Runs started and not yet judged."""
        return len(self._runs)

    def on_sent(self, rec: Sent) -> None:
        key = (rec.connection, rec.message_id)
        if rec.mono < self._last_sent or key in self._runs:
            self._in_order = False  # _runs is no longer in order of sending
        self._last_sent = rec.mono
        self._runs[key] = _Run(rec, key)
        keys = self._keys.get(rec.connection)
        if keys is None:
            keys = self._keys[rec.connection] = {}
        keys[key] = None

    def _pop(self, key: tuple[ConnectionId, str]) -> _Run:
        """Stop tracking the run under ``key``; return it."""
        keys = self._keys.get(key[0])
        if keys is not None:
            keys.pop(key, None)
        return self._runs.pop(key)

    def _pop_connection(self, connection: ConnectionId) -> list[_Run]:
        """Stop tracking ``connection`` and every run of it; return the runs in order."""
        self._heard.pop(connection, None)
        runs = self._runs
        return [runs.pop(key) for key in self._keys.pop(connection, {})]

    def _complete(self, run: _Run, mono: float) -> None:
        run.completed_at = mono
        if self._in_order:
            settling = self._settling
            if settling and mono < cast(float, settling[-1].completed_at):
                self._in_order = False
                settling.clear()
            else:
                settling.append(run)

    def on_received(self, rec: Received) -> list[Finding]:
        """Check one frame; returns duplicate/out-of-order findings at once."""
        self._heard[rec.connection] = rec.mono
        event = rec.frame
        if isinstance(event, Malformed):
            self._on_malformed(rec, event)
            return []
        if not isinstance(event, Event):
            return []
        run = self._runs.get((rec.connection, event.message_id))
        if run is None:
            return []
        phase = self._phase.get(event.type)
        if phase is None:
            return []  # not an event of the lifecycle: the codec's business, not a run's
        run.last_raw = clip(rec.raw)  # bounded: a run may be in flight a long time
        findings: list[Finding] = []
        seq = event.seq
        bit = 1 << phase
        if run.run_id is not None and not run.has_run_id(event.run_id):
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"message {event.message_id} started a second run "
                f"({event.run_id!r} after {sorted(run.run_ids)!r})",
                rec,
            )
        elif seq is not None and run.has_seq(seq):
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"{event.type} (seq {seq}) of message {event.message_id} "
                f"received twice on {rec.connection}",
                rec,
            )
        elif bit & self._singular_bits & run.kinds:
            findings += self._flag(
                run,
                ViolationKind.DUPLICATE_EVENT,
                f"{event.type} of message {event.message_id} received twice on {rec.connection}",
                rec,
            )
        elif (seq is not None and seq < run.max_seq) or phase < run.max_phase:
            numbered = "" if seq is None else f" (seq {seq})"
            after = "" if seq is None else f" (seq {run.max_seq})"
            findings += self._flag(
                run,
                ViolationKind.OUT_OF_ORDER,
                f"{event.type}{numbered} of message {event.message_id} arrived after "
                f"{run.last}{after} on {rec.connection}",
                rec,
            )
        run.add(event, phase, self._names[phase])
        if seq is not None:
            run.max_seq = max(run.max_seq, seq)
        run.max_phase = max(run.max_phase, phase)
        if event.type == self._terminal and run.completed_at is None:
            self._complete(run, rec.mono)
        return findings

    def on_batch(self, batch: ReceivedBatch) -> list[Finding]:
        """:meth:`on_received` for every frame of ``batch``, in order.

        The common frame, its run's next event in every respect (the next seq
        with none missing, the same run id, no earlier phase, a singular type
        not seen before), can yield no finding: it only advances the run here.
        Every other frame goes through :meth:`on_received`.
        """
        if not batch.frames:
            return []
        connection = batch.connection
        self._heard[connection] = batch.mono
        runs, phases, names = self._runs, self._phase, self._names
        singular = self._singular_bits
        terminal = len(names) - 1  # the terminal event's phase
        findings: list[Finding] = []
        message_id, run = None, None  # a read's frames are mostly one run's
        for index, event in enumerate(batch.frames):
            if type(event) is Event:
                if event.message_id != message_id or run is None:
                    message_id = event.message_id
                    run = runs.get((connection, message_id))
                if run is None:
                    continue
                kind, seq = event.type, event.seq
                phase = phases.get(kind)
                if (
                    phase is not None
                    and seq is not None
                    and seq == run.prefix + 1
                    and not run.seqs
                    and phase >= run.max_phase
                    and (event.run_id == run.run_id or run.run_id is None)
                    and not (1 << phase & singular & run.kinds)
                ):
                    # What on_received and _Run.add do for it, finding nothing.
                    raw = batch.received[index][0]
                    run.last_raw = raw if len(raw) <= EVIDENCE_RAW_LIMIT else clip(raw)
                    run.prefix = run.max_seq = seq
                    run.max_phase = phase
                    if run.run_id is None:
                        run.run_id = event.run_id
                    run.kinds |= 1 << phase
                    name = names[phase]
                    run.last = name
                    run.events += 1
                    if len(run.types) < TYPES_KEPT:
                        run.types.append(name)
                    if phase == terminal and run.completed_at is None:
                        self._complete(run, batch.mono)
                    continue
            elif not isinstance(event, Malformed):
                continue  # a pong, an error frame: no run's event
            found = self.on_received(batch.record(index))
            run = None  # on_received may have changed or judged it: look it up again
            if found:
                findings += found
        return findings

    def _on_malformed(self, rec: Received, frame: Malformed) -> None:
        # A malformed frame that names one of this connection's runs was sent for
        # that run: a protocol error (counted by the run), so the event it stood
        # for is not also reported lost.
        obj = frame.obj
        if not isinstance(obj, dict) or not isinstance(obj.get("message_id"), str):
            return
        run = self._runs.get((rec.connection, obj["message_id"]))
        if run is None:
            return
        kind = obj.get("type")
        if not isinstance(run.malformed, set):
            run.malformed = set()
        run.malformed.add(kind if isinstance(kind, str) and kind in self._phase else "?")
        run.malformed_count += 1
        if kind == self._terminal and run.completed_at is None:
            self._complete(run, rec.mono)

    def on_closed(self, rec: Closed) -> list[Finding]:
        """Judge the runs of a closed connection: unfinished ones were cut, not lost.

        So was a run that completed within the settle period before the close
        with events still missing: on a target that reorders a run's events,
        they may have been on their way (the reordering itself was reported
        as it arrived). After the settle period, what is missing is lost.
        """
        findings: list[Finding] = []
        for run in self._pop_connection(rec.connection):
            if run.completed_at is None:
                self.cut += 1
            elif rec.mono - run.completed_at < self._settle and self._missing(run):
                self.cut += 1
            else:
                findings += self._judge(run, now=rec.mono)
        return findings

    def sweep(self, now: float) -> list[Finding]:
        """Judge runs that completed over ``settle_s`` ago or are past the timeout."""
        if self._in_order:
            return self._sweep_in_order(now)
        findings: list[Finding] = []
        for key, run in list(self._runs.items()):
            settled = run.completed_at is not None and now - run.completed_at >= self._settle
            expired = run.completed_at is None and now - run.sent.mono >= self._timeout
            if settled or expired:
                self._pop(key)
                findings += self._judge(run, now=now)
        return findings

    def _sweep_in_order(self, now: float) -> list[Finding]:
        """:meth:`sweep` when runs were sent and completed in time order: the settled
        runs are at the front of ``_settling``, the expired ones at the front of ``_runs``."""
        findings: list[Finding] = []
        runs, settling = self._runs, self._settling
        settle = self._settle
        while settling and now - cast(float, settling[0].completed_at) >= settle:
            run = settling.popleft()
            # Not the run under its key: judged already (its connection closed).
            if runs.get(run.key) is run:
                self._pop(run.key)
                findings += self._judge(run, now=now)
        expired = []
        for key, run in runs.items():
            if now - run.sent.mono < self._timeout:
                break  # this one and every later one were sent within the timeout
            if run.completed_at is None:
                expired.append(key)
        for key in expired:
            findings += self._judge(self._pop(key), now=now)
        return findings

    def finish_connection(self, connection: ConnectionId, now: float) -> list[Finding]:
        """Judge the runs of ``connection`` as if it stayed open (call before closing it)."""
        findings: list[Finding] = []
        for run in self._pop_connection(connection):
            findings += self._judge(run, now=now)
        return findings

    def abandon_connection(self, connection: ConnectionId, now: float) -> list[Finding]:
        """Stop tracking ``connection`` early: finished runs are judged, unfinished ones
        are counted as abandoned (neither lost nor complete: not waited for long enough)."""
        findings: list[Finding] = []
        for run in self._pop_connection(connection):
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
        self._keys.clear()
        self._heard.clear()
        self._settling.clear()
        return findings

    def _judge(self, run: _Run, *, now: float) -> list[Finding]:
        if (
            run.completed_at is not None
            and not run.seqs
            and not run.malformed
            and run.kinds == self._every_kind
        ):
            # The common run: complete, every event type seen, its seqs 1..max in order.
            self.completed += 1
            return []
        mid = run.sent.message_id
        if run.completed_at is None and not run.kinds and not run.malformed:
            if self._heard.get(run.sent.connection, -math.inf) < run.sent.mono:
                self.unresponsive += 1
                return []
        if run.completed_at is None:
            got = ", ".join(run.received_types()) or "nothing"
            waited = now - run.sent.mono
            return self._flag(
                run,
                ViolationKind.LOST_EVENT,
                f"message {mid} got no {self._terminal} on {run.sent.connection} "
                f"within {waited:.1f}s while the connection stayed open (received: {got})",
                None,
            )
        self.completed += 1
        what = self._missing(run)
        if what:
            return self._flag(
                run,
                ViolationKind.LOST_EVENT,
                f"run of message {mid} completed without {what} on {run.sent.connection}",
                None,
            )
        return []

    def _missing(self, run: _Run) -> str:
        """What a completed run lacks (event types, else seqs), or ``""``."""
        seen = run.malformed | {n for phase, n in enumerate(self._names) if run.kinds >> phase & 1}
        # Singular events first, then the repeatable ones (each needed at least once).
        missing = [name for name in self._singular if name not in seen]
        missing += [name for name in self._repeatable if name not in seen]
        if missing:
            return ", ".join(missing)
        # Counted, never enumerated: a target may send seq 10**18.
        held = run.prefix + sum(1 for seq in run.seqs if run.prefix < seq <= run.max_seq)
        if run.max_seq - held > run.malformed_count:
            absent = (n for n in range(run.prefix + 1, run.max_seq + 1) if n not in run.seqs)
            return f"seq {', '.join(map(str, itertools.islice(absent, 10)))}"
        return ""

    def _flag(
        self, run: _Run, kind: ViolationKind, detail: str, rec: Received | None
    ) -> list[Finding]:
        if kind in run.reported:
            return []
        if not isinstance(run.reported, set):
            run.reported = set()
        run.reported.add(kind)
        sent = run.sent
        evidence: dict[str, Any] = {
            "connection": sent.connection,
            "message_id": sent.message_id,
            "thread_id": sent.thread_id,
            "sent_at": iso_time(sent.wall),
            "sent_mono": round(sent.mono, 6),
            "received_types": run.received_types(),
            "seed": self._seed,
        }
        if rec is not None:
            evidence |= {
                "raw": clip(rec.raw),
                "received_at": iso_time(rec.wall),
                "received_mono": round(rec.mono, 6),
            }
        elif run.last_raw:
            evidence["last_raw"] = run.last_raw
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
