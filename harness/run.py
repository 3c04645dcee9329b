"""One isolation run: records in, findings, counts, coverage and a summary out.

The :class:`Run` is the :class:`~harness.recording.RecordSink` every
connection writes to. It writes each record to ``events.jsonl`` and hands it
to the streaming oracles at once, so a leak is found as it happens and
memory holds only runs in flight. An exception inside an oracle is a harness
error that reaches the summary, never a silent pass.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.aep import AEP_CODEC, ErrorFrame, Event, Malformed
from harness.canary import CanaryBook
from harness.codec import Codec
from harness.coverage import CONDITIONS, missing
from harness.findings import Finding
from harness.oracles.cross_delivery import CrossDeliveryOracle, check_outside_write
from harness.oracles.lifecycle import LifecycleOracle
from harness.oracles.shared_state import CrossProbe, ProbeOutcome, check_exchange, judge_cross_probe
from harness.oracles.witness import clip
from harness.recording import (
    Clock,
    Closed,
    EventLog,
    HttpExchange,
    Opened,
    OutsideWrite,
    Received,
    ReceivedBatch,
    Record,
    Sent,
    SentFrame,
)
from harness.types import (
    ConnectionId,
    DeliveryPolicy,
    ScenarioId,
    UserKey,
    Verdict,
    ViolationKind,
)

SCHEMA = "isoharness.summary/1"
MAX_FINDINGS = 2000
"""Findings kept with full evidence; beyond this only counts grow (bounded memory)."""
SWEEP_EVERY = 500
"""Records between two automatic sweeps of the lifecycle oracle …"""
SWEEP_INTERVAL_S = 0.1
"""… and the least time between them (settled runs are kept for a second anyway)."""

UNANSWERED = (
    "frames the target must refuse (AEP/1 §3) that got no bad_request error frame within "
    "the lifecycle timeout while their connection stayed open"
)

UNRESPONSIVE = (
    "runs that got no event at all while their connection received nothing for the whole "
    "lifecycle timeout: the target stopped answering"
)

EXIT_CODES: dict[Verdict, int] = {
    Verdict.PASS: 0,
    Verdict.FAIL: 1,
    Verdict.ERROR: 3,
    Verdict.INCONCLUSIVE: 4,
    Verdict.INTERRUPTED: 130,
}


def leak_rate_excluded(events_checked: int, *, confidence: float = 0.95) -> float:
    """The per-event leak rate that ``events_checked`` clean events rule out.

    If a service misrouted each event independently with probability ``p``,
    ``n`` events would all arrive clean with probability ``(1 - p) ** n``; that is
    at most ``1 - confidence`` for every ``p`` at or above the returned
    ``1 - (1 - confidence) ** (1 / n)`` (the exact one-sided binomial bound for no
    event seen; about ``3 / n`` at 95%, the "rule of three").

    Args:
        events_checked: events the ``cross_delivery`` oracle checked, none leaked.
        confidence: how sure the exclusion is (0.95: wrong one run in twenty).

    Returns:
        The bound, in (0, 1]; ``confidence`` itself for one event.

    Raises:
        ValueError: ``events_checked`` is not positive, or ``confidence`` is not in (0, 1).
    """
    if events_checked <= 0:
        raise ValueError(f"events_checked {events_checked}: a bound needs at least one event")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence}: a probability strictly between 0 and 1")
    # 1 - (1 - c) ** (1 / n), without the cancellation of 1 - x for x near 1.
    return -math.expm1(math.log1p(-confidence) / events_checked)


def evidence_json(events_checked: int, *, cross_deliveries: int) -> dict[str, Any] | None:
    """The summary's ``evidence`` block: how strong a clean ``cross_delivery`` result is.

    ``{"events_checked": n, "leak_rate_excluded_95": p, "one_in": k}``: the run checked
    ``n`` received events for cross-user delivery and found none, so a leak hitting more
    than one event in ``k`` (``k = floor(1 / p)``, rounded down so the claim never
    overstates) would have shown, at 95% confidence; see :func:`leak_rate_excluded`.

    It is written whatever the verdict, because the measurement stands on its own: a run
    that failed on a lost event, errored or was interrupted still checked ``n`` events
    and saw no leak among them. It is left out (``None``) when nothing was checked, and
    when a ``cross_delivery`` was found: the bound assumes none was seen, so it would
    understate a leak that happened; the violations are then the evidence.
    """
    if events_checked <= 0 or cross_deliveries > 0:
        return None
    rate = leak_rate_excluded(events_checked)
    return {
        "events_checked": events_checked,
        "leak_rate_excluded_95": rate,
        "one_in": math.floor(1.0 / rate),
    }


@dataclass(frozen=True, slots=True)
class Target:
    """What is under test (never with credentials)."""

    base_url: str
    ws_url: str
    embedded: bool = False
    faults: tuple[str, ...] = ()
    pid: int | None = None
    adapter: str = "aep"

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.base_url,
            "ws_url": self.ws_url,
            "embedded": self.embedded,
            "adapter": self.adapter,
        }


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario instance did and found."""

    id: ScenarioId
    declared: tuple[str, ...] = ()
    coverage: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    outcome: str = "running"
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        if self.outcome == "skipped":
            return []  # not applicable to the target's protocol: nothing was required
        return missing(self.declared, self.coverage)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "outcome": self.outcome,
            "duration_s": round(self.duration_s, 3),
            "violations": self.violations,
            "conditions": list(self.declared),
            "missing_conditions": self.missing,
            "coverage": {name: self.coverage[name] for name in CONDITIONS},
            "notes": self.notes,
        }


class Run:
    """State of one run, shared by every scenario.

    Args:
        target: what is under test.
        report_dir: where ``events.jsonl`` (and later the summary) go.
        seed: the run's seed (in every witness).
        run_key: the secret canaries are derived from.
        policy: who may receive another user's events.
        lifecycle_timeout_s: how long a run may take before it counts as lost.
        redact: applied to everything written to disk.
        needs_redaction: a cheap necessary condition for ``redact`` to change
            a line's UTF-8 bytes (see :class:`~harness.recording.EventLog`); ``None``: every
            line is redacted.
        codec: the target's protocol: its lifecycle and whether its events
            carry owner tags decide how runs and deliveries are judged.
        events_max_bytes: the most ``events.jsonl`` may hold (``None``: no
            limit); past it, records are still checked but not written, and
            the summary says how many (an ``events_log_capped`` error).
    """

    def __init__(
        self,
        *,
        target: Target,
        report_dir: Path,
        seed: int,
        run_key: bytes,
        run_id: str,
        policy: DeliveryPolicy = DeliveryPolicy.OWNER_ONLY,
        lifecycle_timeout_s: float = 20.0,
        redact: Callable[[str], str] | None = None,
        needs_redaction: Callable[[bytes], bool] | None = None,
        codec: Codec = AEP_CODEC,
        events_max_bytes: int | None = None,
    ) -> None:
        self.target = target
        self.report_dir = report_dir
        self.seed = seed
        self.id = run_id
        self.tag = run_id[-6:]
        self.policy = policy
        self.lifecycle_timeout_s = lifecycle_timeout_s
        self.clock = Clock()
        self.started_wall = time.time()
        self.canaries = CanaryBook(run_key)
        report_dir.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(
            report_dir / "events.jsonl",
            redact=redact,
            needs_redaction=needs_redaction,
            max_bytes=events_max_bytes,
        )
        self._cross = CrossDeliveryOracle(
            self.canaries, policy=policy, seed=seed, owner_tags=codec.owner_tags
        )
        self._lifecycle = LifecycleOracle(
            timeout_s=lifecycle_timeout_s, seed=seed, lifecycle=codec.lifecycle
        )
        self.findings: list[Finding] = []
        self.finding_counts: Counter[str] = Counter()
        self.scenarios: dict[ScenarioId, ScenarioResult] = {}
        self.counts: Counter[str] = Counter()
        self.users: set[UserKey] = set()
        self.errors: dict[tuple[str, str], dict[str, Any]] = {}
        self.probe_outcomes: Counter[str] = Counter()
        self._records_since_sweep = 0
        self._last_sweep = 0.0
        self._connections = 0
        # Error frames expected on each open connection: replies to its bad frames.
        self._rejections_due: dict[ConnectionId, int] = {}

    def use_codec(self, codec: Codec) -> None:
        """Judge by ``codec`` from now on (before any message is sent).

        For a session that opens its run before it knows the target's protocol.

        Raises:
            RuntimeError: messages were already sent under another codec.
        """
        if self.counts["messages_sent"]:
            raise RuntimeError("use_codec() after messages were sent")
        self._cross = CrossDeliveryOracle(
            self.canaries, policy=self.policy, seed=self.seed, owner_tags=codec.owner_tags
        )
        self._lifecycle = LifecycleOracle(
            timeout_s=self.lifecycle_timeout_s, seed=self.seed, lifecycle=codec.lifecycle
        )

    def next_connection_id(self) -> ConnectionId:
        """A connection id unique within the run (``c1``, ``c2`` …)."""
        self._connections += 1
        return ConnectionId(f"c{self._connections}")

    # -- scenarios -----------------------------------------------------------------------------

    def scenario(self, scenario: ScenarioId, declared: Iterable[str] = ()) -> ScenarioResult:
        """The result record of ``scenario``, created on first use."""
        result = self.scenarios.get(scenario)
        if result is None:
            result = self.scenarios[scenario] = ScenarioResult(scenario, tuple(declared))
        return result

    def cover(self, scenario: ScenarioId, condition: str, count: int = 1) -> None:
        """Count ``count`` occurrences of ``condition`` created by ``scenario``."""
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
        self.scenario(scenario).coverage[condition] += count

    # -- records -------------------------------------------------------------------------------

    def record(self, rec: Record) -> None:
        """Write ``rec`` to ``events.jsonl`` and run the streaming oracles on it."""
        self.log.write(rec)
        try:
            self._observe(rec)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            self.error("harness_error", f"an oracle failed: {exc!r}", traceback.format_exc())

    def record_batch(self, batch: ReceivedBatch) -> None:
        """:meth:`record` every frame of ``batch``: one write, one pass of each oracle."""
        self.log.write_batch(batch)
        try:
            self._observe_batch(batch)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            self.error("harness_error", f"an oracle failed: {exc!r}", traceback.format_exc())

    def _observe_batch(self, batch: ReceivedBatch) -> None:
        count = len(batch.frames)
        self.counts["events_received"] += count
        found = self._cross.check_batch(batch)
        if found:
            self.add_findings(found)
        found = self._lifecycle.on_batch(batch)
        if found:
            self.add_findings(found)
        for index, frame in enumerate(() if batch.every_event else batch.frames):
            if type(frame) is Event:
                pass
            elif isinstance(frame, Malformed):
                self.error("protocol_error", frame.reason, clip(batch.received[index][0], 512))
            elif isinstance(frame, ErrorFrame):
                self._on_error_frame(batch.connection, frame)
        self._records_since_sweep += count
        if self._records_since_sweep >= SWEEP_EVERY:
            self._records_since_sweep = 0
            if self.clock.mono() - self._last_sweep >= SWEEP_INTERVAL_S:
                self.sweep()

    def _observe(self, rec: Record) -> None:
        if isinstance(rec, Sent):  # the hot path: one per message
            self.counts["messages_sent"] += 1
            self._lifecycle.on_sent(rec)
        elif isinstance(rec, Received):
            # The hot path, once per frame: findings are rare, so only a
            # non-empty list is handed on.
            self.counts["events_received"] += 1
            found = self._cross.check(rec)
            if found:
                self.add_findings(found)
            found = self._lifecycle.on_received(rec)
            if found:
                self.add_findings(found)
            frame = rec.frame
            if type(frame) is Event:
                pass
            elif isinstance(frame, Malformed):
                self.error("protocol_error", frame.reason, clip(rec.raw, 512))
            elif isinstance(frame, ErrorFrame):
                self._on_error_frame(rec.connection, frame)
        elif isinstance(rec, Opened):
            self.counts["connections"] += 1
            if rec.user not in self.users:
                self.users.add(rec.user)
        elif isinstance(rec, Closed):
            self.add_findings(self._lifecycle.on_closed(rec))
            self._rejections_due.pop(rec.connection, None)  # cut: no reply is owed any more
            if rec.initiator == "injected":
                self.counts["connections_cut_by_injected_faults"] += 1
            elif rec.initiator != "client":
                code = "" if rec.code is None else f" (code {rec.code})"
                self.error("connection_closed_by_target", f"{rec.initiator}{code}: {rec.reason}")
        elif isinstance(rec, SentFrame):
            self.counts["bad_frames_sent"] += 1
        elif isinstance(rec, OutsideWrite):
            self.counts["outside_writes"] += 1
            self.add_findings(check_outside_write(rec, policy=self.policy, seed=self.seed))
        elif isinstance(rec, HttpExchange):
            self.counts["http_probes"] += 1
            if rec.status >= 500:
                self.error(
                    "http_5xx", f"{rec.method} {rec.path.split('/')[1]} answered {rec.status}"
                )
            if rec.purpose != "cross_read":
                self.add_findings(
                    check_exchange(rec, self.canaries, policy=self.policy, seed=self.seed)
                )
        self._records_since_sweep += 1
        if self._records_since_sweep >= SWEEP_EVERY:
            # A sweep walks every run in flight: every SWEEP_EVERY records, but
            # not more often than SWEEP_INTERVAL_S, or a fast stream pays for
            # thousands of runs per few hundred frames.
            self._records_since_sweep = 0
            if self.clock.mono() - self._last_sweep >= SWEEP_INTERVAL_S:
                self.sweep()

    def expect_rejection(self, connection: ConnectionId) -> None:
        """A frame the target must refuse was sent on ``connection``: expect its error frame.

        AEP/1 §3: a bad frame gets ``{"type": "error", "code": "bad_request"}`` and the
        connection stays open. That reply is counted in ``counts["bad_frames_rejected"]``,
        not as a ``target_rejected_frame`` error; a connection judged while open
        (:meth:`judge_connection`) with a reply still missing counts a
        ``bad_frame_unanswered`` error per missing reply. Call before sending.
        """
        self._rejections_due[connection] = self._rejections_due.get(connection, 0) + 1

    def rejections_due(self, connection: ConnectionId) -> int:
        """Error frames still owed to the bad frames sent on ``connection`` while it is open."""
        return self._rejections_due.get(connection, 0)

    def _on_error_frame(self, connection: ConnectionId, frame: ErrorFrame) -> None:
        due = self._rejections_due.get(connection, 0)
        if due and frame.code == "bad_request":
            if due == 1:
                del self._rejections_due[connection]
            else:
                self._rejections_due[connection] = due - 1
            self.counts["bad_frames_rejected"] += 1
        else:
            self.error("target_rejected_frame", f"{frame.code}: {frame.message}"[:200])

    def sweep(self) -> None:
        """Judge runs that have settled or timed out."""
        self._records_since_sweep = 0
        self._last_sweep = now = self.clock.mono()
        self.add_findings(self._lifecycle.sweep(now))

    def judge_connection(self, connection: ConnectionId) -> None:
        """Judge the runs of a connection that is still open (before the harness closes it),
        and the replies owed to its bad frames (see :meth:`expect_rejection`)."""
        self.add_findings(self._lifecycle.finish_connection(connection, self.clock.mono()))
        for _ in range(self._rejections_due.pop(connection, 0)):
            self.error("bad_frame_unanswered", UNANSWERED)

    def abandon_connection(self, connection: ConnectionId) -> None:
        """Stop waiting for an open connection's unfinished runs (see :attr:`runs_abandoned`)."""
        self.add_findings(self._lifecycle.abandon_connection(connection, self.clock.mono()))
        self._rejections_due.pop(connection, None)

    @property
    def runs_abandoned(self) -> int:
        """Runs not waited for to the end: the run had already failed, or was interrupted."""
        return self._lifecycle.abandoned

    def finish_lifecycles(self) -> None:
        """Judge every run still tracked (end of a scenario: connections are closed)."""
        self.add_findings(self._lifecycle.finish(self.clock.mono()))
        self._rejections_due.clear()

    @property
    def runs_cut(self) -> int:
        return self._lifecycle.cut

    @property
    def runs_completed(self) -> int:
        """Runs judged with their terminal event received (whole or not)."""
        return self._lifecycle.completed

    def judge_probe(self, probe: CrossProbe) -> ProbeOutcome:
        """Judge one cross-user read and record its outcome."""
        outcome, reason, finding = judge_cross_probe(probe, policy=self.policy, seed=self.seed)
        self.probe_outcomes[str(outcome)] += 1
        if finding is not None:
            self.add_findings([finding])
        if outcome is ProbeOutcome.INCONCLUSIVE:
            self.scenario(probe.scenario).notes.append(f"inconclusive probe: {reason}")
            del self.scenario(probe.scenario).notes[:-20]
        else:
            self.cover(probe.scenario, "cross_user_probes")
        return outcome

    # -- findings and errors -------------------------------------------------------------------

    def add_findings(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.finding_counts[str(finding.kind)] += 1
            self.scenario(finding.scenario).violations += 1
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append(finding)

    def findings_of(self, scenario: ScenarioId) -> list[Finding]:
        return [f for f in self.findings if f.scenario == scenario]

    def error(self, kind: str, detail: str, example: str | None = None) -> None:
        """Count an error (a target fault or a harness failure, not a violation)."""
        key = (kind, detail)
        entry = self.errors.get(key)
        if entry is None:
            if len(self.errors) >= 500:
                key = (kind, "other errors of this kind")
                entry = self.errors.setdefault(key, {"kind": kind, "detail": key[1], "count": 0})
            else:
                entry = self.errors[key] = {"kind": kind, "detail": detail, "count": 0}
                if example is not None:
                    entry["example"] = example
        entry["count"] += 1

    # -- verdict and summary ---------------------------------------------------------------------

    def _sync_derived_errors(self) -> None:
        """The errors counted elsewhere (the lifecycle oracle, the event log), as of now."""
        count = self._lifecycle.unresponsive
        if count:
            key = ("target_unresponsive", UNRESPONSIVE)
            self.errors[key] = {"kind": key[0], "detail": key[1], "count": count}
        dropped = self.log.lines_dropped
        if dropped:
            detail = (
                f"events.jsonl reached its cap of {(self.log.max_bytes or 0) / 2**20:.4g} MiB "
                "(--events-max-mb): later records were checked but not written; "
                "count: lines left out"
            )
            key = ("events_log_capped", detail)
            self.errors[key] = {"kind": key[0], "detail": detail, "count": dropped}

    def verdict(self, *, interrupted: bool = False, target_unusable: bool = False) -> Verdict:
        """``interrupted`` if stopped early, else ``fail`` on any violation, then
        ``error``, then ``inconclusive`` when a scenario missed its conditions."""
        if interrupted:
            # Everything seen so far, violations included, is in the summary.
            return Verdict.INTERRUPTED
        if self.finding_counts:
            return Verdict.FAIL
        self._sync_derived_errors()
        unresponsive = self._lifecycle.unresponsive > 0
        if (
            target_unusable
            or unresponsive
            or any(r.outcome == "error" for r in self.scenarios.values())
        ):
            return Verdict.ERROR
        applied = [r for r in self.scenarios.values() if r.outcome != "skipped"]
        if not applied or any(r.missing for r in applied):
            return Verdict.INCONCLUSIVE
        return Verdict.PASS

    def summary(self, verdict: Verdict, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``summary.json`` document (schema ``isoharness.summary/1``)."""
        self._sync_derived_errors()
        coverage: Counter[str] = Counter()
        for result in self.scenarios.values():
            coverage.update(result.coverage)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "verdict": str(verdict),
            "exit_code": EXIT_CODES[verdict],
            "run": {
                "id": self.id,
                "seed": self.seed,
                "policy": str(self.policy),
                "started_at": self.started_wall,
                "duration_s": round(self.clock.mono(), 3),
            },
            "target": self.target.to_json(),
            "counts": {
                "users": len(self.users),
                "connections": self.counts["connections"],
                "messages_sent": self.counts["messages_sent"],
                "events_received": self.counts["events_received"],
                "http_probes": self.counts["http_probes"],
                "outside_writes": self.counts["outside_writes"],
                "runs_cut_by_disconnect": self.runs_cut,
                "runs_abandoned": self.runs_abandoned,
                "connections_cut_by_injected_faults": self.counts[
                    "connections_cut_by_injected_faults"
                ],
                "connects_cut_by_injected_faults": self.counts["connects_cut_by_injected_faults"],
            },
            "coverage": {name: coverage[name] for name in CONDITIONS},
            "probes": dict(self.probe_outcomes),
            "violation_counts": dict(self.finding_counts),
            "violations": [f.to_json() for f in self.findings],
            "errors": list(self.errors.values()),
            "scenarios": [r.to_json() for r in self.scenarios.values()],
        }
        # Every received frame, malformed ones included, went through the cross_delivery
        # oracle (record, record_batch): events_received is the count it checked.
        evidence = evidence_json(
            self.counts["events_received"],
            cross_deliveries=self.finding_counts[str(ViolationKind.CROSS_DELIVERY)],
        )
        if evidence is not None:
            doc["evidence"] = evidence
        if extra:
            doc |= extra
        return doc

    def close(self) -> None:
        self.log.close()
