"""Distributed runs (pytest-xdist): which users a worker drives, and one summary from many.

Under ``-n N`` (or ``--tx``) every worker runs every scenario with its share of
each scenario's users (:class:`Shard`), all workers against the same target with
the run id, run key and seed the controller gave them. Canaries decode
themselves (:mod:`harness.canary`), so a worker attributes whatever it receives
to its owner whichever worker drives that owner. At the end each worker hands its
``summary.json`` document to the controller, and :func:`merge_summaries` makes
the run's one summary: verdicts by precedence, counts summed, findings
concatenated (capped), each scenario's coverage summed over the workers (a
condition created on any worker counts), the evidence bound computed again from the
summed count of events checked.

Pure functions over summary documents: no pytest, no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any, TypeVar

from harness.coverage import CONDITIONS, missing
from harness.run import EXIT_CODES, MAX_FINDINGS, evidence_json
from harness.types import Verdict, ViolationKind

T = TypeVar("T")

#: Most severe first: the merged verdict is the first that applies.
PRECEDENCE = (
    Verdict.INTERRUPTED,
    Verdict.FAIL,
    Verdict.ERROR,
    Verdict.INCONCLUSIVE,
    Verdict.PASS,
)


@dataclass(frozen=True, slots=True)
class Shard:
    """Worker ``index`` of ``count``: which of a scenario's users it drives.

    Users are planned tenant by tenant in turn (``t0/u0, t1/u0, t0/u1 …``);
    each worker takes a contiguous slice, so its users still span the
    tenants and share subs across them, and slice sizes differ by one at most.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker {self.index} of {self.count}")

    def select(self, users: Sequence[T]) -> list[T]:
        """This worker's slice of ``users``."""
        n = len(users)
        return list(users[self.index * n // self.count : (self.index + 1) * n // self.count])


@dataclass(slots=True)
class Workers:
    """What the controller of a distributed run gathers from its workers as they finish."""

    #: Worker id → its final summary.
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Worker id → the users it drove (``tenant/user``).
    users: dict[str, list[str]] = field(default_factory=dict)
    #: Workers that went down without a summary.
    lost: list[str] = field(default_factory=list)
    #: Workers that could not join the run → why.
    failed: dict[str, str] = field(default_factory=dict)

    def finished(self, worker: str, summary: dict[str, Any], users: list[str]) -> None:
        self.summaries[worker] = summary
        self.users[worker] = users

    def merge(self, controller: Mapping[str, Any], *, interrupted: bool) -> dict[str, Any]:
        """:func:`merge_summaries` of the controller's summary and every worker's so far."""
        return merge_summaries(
            controller,
            self.summaries,
            interrupted=interrupted,
            lost=self.lost,
            failed=self.failed,
            users_of=self.users,
        )


def merge_summaries(
    controller: Mapping[str, Any],
    workers: Mapping[str, Mapping[str, Any]],
    *,
    interrupted: bool = False,
    lost: Sequence[str] = (),
    failed: Mapping[str, str] | None = None,
    users_of: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The run's summary from the controller's and every worker's.

    Args:
        controller: the controller's own summary: the target, the settings, and
            what it judged itself (gauges, memory; no scenario runs there).
        workers: worker id (``gw0`` …) → that worker's final summary.
        interrupted: the controller was interrupted.
        lost: workers that went down without a summary (crashed, unreachable).
        failed: workers that could not join the run → why.
        users_of: worker id → the users it drove, to name the owner's worker
            of each violation (``owner_worker``).

    Returns:
        A summary of schema ``isoharness.summary/1`` with a ``workers`` list;
        each violation names the worker that saw it (``worker``); its ``evidence``
        block is computed from the summed ``events_received``, not taken from a worker.
    """
    doc: dict[str, Any] = {key: value for key, value in controller.items()}
    owner_worker = {user: wid for wid, users in (users_of or {}).items() for user in users}
    counts: Counter[str] = Counter(_ints(controller.get("counts")))
    probes: Counter[str] = Counter(_ints(controller.get("probes")))
    violation_counts: Counter[str] = Counter(_ints(controller.get("violation_counts")))
    violations = [dict(v) for v in controller.get("violations", [])]
    errors: dict[tuple[str, str], dict[str, Any]] = {}
    scenarios: dict[str, dict[str, Any]] = {}
    _merge_errors(errors, controller.get("errors", []))
    _merge_scenarios(scenarios, controller.get("scenarios", []), None)
    verdicts = [str(controller.get("verdict"))]
    listing = []
    kept: list[list[dict[str, Any]]] = []
    for wid in sorted(workers, key=_worker_order):
        summary = workers[wid]
        verdicts.append(str(summary.get("verdict")))
        counts.update(_ints(summary.get("counts")))
        probes.update(_ints(summary.get("probes")))
        violation_counts.update(_ints(summary.get("violation_counts")))
        kept.append([_attributed(v, wid, owner_worker) for v in summary.get("violations", [])])
        _merge_errors(errors, summary.get("errors", []), wid)
        _merge_scenarios(scenarios, summary.get("scenarios", []), wid)
        listing.append(
            {
                "id": wid,
                "verdict": summary.get("verdict"),
                "final": summary.get("final"),
                "counts": summary.get("counts", {}),
                "violations": sum(_ints(summary.get("violation_counts")).values()),
                "summary": f"{wid}/summary.json",
                "events": f"{wid}/events.jsonl",
            }
        )
    # Turn about, so that every worker's findings are kept when there are too many.
    for batch in zip_longest(*kept):
        if len(violations) >= MAX_FINDINGS:
            break
        violations += [v for v in batch if v is not None][: MAX_FINDINGS - len(violations)]
    for wid in lost:
        key = ("worker_lost", f"{wid} went down without a summary")
        errors[key] = {"kind": key[0], "detail": key[1], "count": 1}
        listing.append({"id": wid, "verdict": None, "final": False, "lost": True})
    for wid, why in (failed or {}).items():
        key = ("worker_failed", f"{wid} could not join the run: {why}")
        errors[key] = {"kind": key[0], "detail": key[1], "count": 1}
        listing.append({"id": wid, "verdict": None, "final": False, "failed": why})
    coverage: Counter[str] = Counter()
    for scenario in scenarios.values():
        scenario["missing_conditions"] = missing(scenario["conditions"], scenario["coverage"])
        scenario["outcome"] = _scenario_outcome(scenario)
        coverage.update(scenario["coverage"])
    verdict = _verdict(
        interrupted=interrupted or Verdict.INTERRUPTED in verdicts,
        violations=sum(violation_counts.values()) > 0,
        error=Verdict.ERROR in verdicts
        or bool(lost)
        or bool(failed)
        or any(s["outcome"] == "error" for s in scenarios.values()),
        inconclusive=not scenarios or any(s["missing_conditions"] for s in scenarios.values()),
    )
    doc |= {
        "verdict": str(verdict),
        "exit_code": EXIT_CODES[verdict],
        "counts": dict(counts),
        "coverage": {name: coverage[name] for name in CONDITIONS},
        "probes": dict(probes),
        "violation_counts": dict(violation_counts),
        "violations": violations,
        "errors": list(errors.values()),
        "scenarios": [
            {k: v for k, v in s.items() if k != "coverage"}
            | {"coverage": {name: s["coverage"][name] for name in CONDITIONS}}
            for s in scenarios.values()
        ],
        "workers": listing,
    }
    # Over the whole run's events: n workers' n separate bounds would each claim too little.
    evidence = evidence_json(
        counts["events_received"],
        cross_deliveries=violation_counts[str(ViolationKind.CROSS_DELIVERY)],
    )
    doc.pop("evidence", None)
    if evidence is not None:
        doc["evidence"] = evidence
    return doc


def _attributed(
    violation: Mapping[str, Any], worker: str, owner_worker: Mapping[str, str]
) -> dict[str, Any]:
    """``violation`` with the workers of its victim and, when known, its owner."""
    entry = dict(violation) | {"worker": worker}
    owner = violation.get("owner")
    if owner is not None and owner in owner_worker:
        entry["owner_worker"] = owner_worker[owner]
        if owner_worker[owner] != worker:
            entry["detail"] = (
                f"{violation.get('detail')} [victim on worker {worker}, "
                f"owner on worker {owner_worker[owner]}]"
            )
    return entry


def _verdict(*, interrupted: bool, violations: bool, error: bool, inconclusive: bool) -> Verdict:
    if interrupted:
        return Verdict.INTERRUPTED
    if violations:
        return Verdict.FAIL
    if error:
        return Verdict.ERROR
    if inconclusive:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def _worker_order(wid: str) -> tuple[int, str]:
    digits = "".join(c for c in wid if c.isdigit())
    return (int(digits) if digits else -1, wid)


def _ints(mapping: object) -> dict[str, int]:
    if not isinstance(mapping, Mapping):
        return {}
    return {str(k): v for k, v in mapping.items() if isinstance(v, int) and not isinstance(v, bool)}


def _merge_errors(
    into: dict[tuple[str, str], dict[str, Any]], errors: Sequence[Any], worker: str | None = None
) -> None:
    for error in errors:
        if not isinstance(error, Mapping):
            continue
        key = (str(error.get("kind")), str(error.get("detail")))
        entry = into.get(key)
        if entry is None:
            entry = into[key] = dict(error) | {"count": 0}
            if worker is not None:
                entry["workers"] = []
        entry["count"] += int(error.get("count", 1))
        if worker is not None and worker not in entry.setdefault("workers", []):
            entry["workers"].append(worker)


def _merge_scenarios(
    into: dict[str, dict[str, Any]], scenarios: Sequence[Any], worker: str | None
) -> None:
    for scenario in scenarios:
        if not isinstance(scenario, Mapping):
            continue
        sid = str(scenario.get("id"))
        entry = into.get(sid)
        if entry is None:
            entry = into[sid] = {
                "id": sid,
                "outcome": "passed",
                "duration_s": 0.0,
                "violations": 0,
                "conditions": [],
                "missing_conditions": [],
                "coverage": Counter[str](),
                "notes": [],
                "worker_outcomes": {},
            }
        outcome = str(scenario.get("outcome"))
        entry["worker_outcomes"][worker or "controller"] = outcome
        entry["duration_s"] = max(entry["duration_s"], float(scenario.get("duration_s") or 0.0))
        entry["violations"] += int(scenario.get("violations") or 0)
        for name in scenario.get("conditions", []):
            if name not in entry["conditions"]:
                entry["conditions"].append(name)
        entry["coverage"].update(_ints(scenario.get("coverage")))
        prefix = f"{worker}: " if worker else ""
        entry["notes"] = (entry["notes"] + [prefix + str(n) for n in scenario.get("notes", [])])[
            :20
        ]


def _scenario_outcome(scenario: Mapping[str, Any]) -> str:
    """One outcome from every worker's: a violation fails it, an error errs it, and a
    worker whose share of users missed a condition another worker created does not
    make it inconclusive."""
    if scenario["violations"]:
        return "failed"
    outcomes = scenario["worker_outcomes"].values()
    if "error" in outcomes or "failed" in outcomes:
        return "error"
    if "running" in outcomes:
        return "running"
    if scenario["missing_conditions"]:
        return "inconclusive"
    return "passed"
