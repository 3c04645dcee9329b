"""Turns the timeline into ``memory_growth`` and ``resource_leak`` findings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.findings import Finding
from harness.monitor import MEMORY, SESSIONS
from harness.oracles.memory_growth import GrowthDecision, decide_memory_growth, memory_samples
from harness.oracles.resource_leak import decide_resource_leak, gauge_samples
from harness.probes.sampler import TimelineSample
from harness.types import ScenarioId, ViolationKind


def memory_decision(
    samples: Sequence[TimelineSample], *, floor_bytes_per_session: float, seed: int
) -> GrowthDecision:
    """The memory-growth decision over the idle samples of the timeline.

    Only idle points are judged: samples under load carry in-flight buffers, and
    a short run with no idle points between cycles has nothing to judge
    (``insufficient_data``), never a verdict drawn from busy samples.
    """
    rows = [r for r in memory_samples(samples, memory=MEMORY, sessions=SESSIONS) if r.idle]
    # One point per session count (the last): repeated samples while nothing
    # happens (waiting for gauges to settle) would weigh one moment many times.
    last = {r.sessions: r for r in rows}
    return decide_memory_growth(
        list(last.values()), floor_bytes_per_session=floor_bytes_per_session, seed=seed
    )


def decision_json(decision: GrowthDecision, samples: Sequence[TimelineSample]) -> dict[str, Any]:
    """The ``summary.json`` ``memory`` block (with the intercept the report's trend line needs)."""
    doc: dict[str, Any] = {
        "status": decision.status,
        "significant": decision.significant,
        "slope_bytes_per_session": _num(decision.slope_bytes_per_session),
        "ci_low": _num(decision.ci_low),
        "ci_high": _num(decision.ci_high),
        "bytes_per_hour": _num(decision.bytes_per_hour),
        "projected_24h_bytes": _num(decision.projected_24h_bytes),
        "samples_used": decision.samples_used,
        "warmup_sessions": _num(decision.warmup_sessions),
        "detail": decision.detail,
    }
    rows = memory_samples(samples, memory=MEMORY, sessions=SESSIONS)
    slope = decision.slope_bytes_per_session
    if rows and math.isfinite(slope):
        residuals = sorted(r.memory_bytes - slope * r.sessions for r in rows if r.idle) or sorted(
            r.memory_bytes - slope * r.sessions for r in rows
        )
        doc["intercept_bytes"] = residuals[len(residuals) // 2]
    return doc


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


_DECISION_NUMBERS = (
    "slope_bytes_per_session",
    "ci_low",
    "ci_high",
    "bytes_per_hour",
    "projected_24h_bytes",
    "warmup_sessions",
)
"""The figures of a decision, all ``None`` in a block with no decision."""
NOT_JUDGED_DISTRIBUTED = (
    "not judged in a distributed run (-n): the workers count the sessions served and the "
    "controller samples the target's memory, so no one timeline has both; run the soak "
    "without -n to judge memory_growth"
)


def memory_not_judged(detail: str) -> dict[str, Any]:
    """The ``summary.json`` ``memory`` block when no decision was attempted, and why."""
    doc: dict[str, Any] = {key: None for key in _DECISION_NUMBERS}
    return doc | {"status": "not_judged", "significant": False, "samples_used": 0, "detail": detail}


def memory_finding(decision: GrowthDecision, scenario: ScenarioId, seed: int) -> Finding | None:
    if not decision.significant:
        return None
    return Finding(
        kind=ViolationKind.MEMORY_GROWTH,
        scenario=scenario,
        victim=None,
        owner=None,
        detail=decision.detail,
        evidence={
            "slope_bytes_per_session": decision.slope_bytes_per_session,
            "ci_low": decision.ci_low,
            "ci_high": decision.ci_high,
            "bytes_per_hour": decision.bytes_per_hour,
            "projected_24h_bytes": decision.projected_24h_bytes,
            "samples_used": decision.samples_used,
            "seed": seed,
        },
    )


def gauge_findings(
    samples: Sequence[TimelineSample],
    *,
    idle_values: Mapping[str, float],
    quiet_since_s: float,
    grace_s: float,
    scenario: ScenarioId,
    seed: int,
) -> list[Finding]:
    """One ``resource_leak`` finding per gauge that did not return to idle after quiet."""
    found = decide_resource_leak(
        gauge_samples(samples),
        idle_values=idle_values,
        quiet_since_s=quiet_since_s,
        grace_s=grace_s,
    )
    return [
        Finding(
            kind=ViolationKind.RESOURCE_LEAK,
            scenario=scenario,
            victim=None,
            owner=None,
            detail=f.detail,
            evidence={
                "gauge": f.gauge,
                "idle_value": f.idle_value,
                "last_value": f.last_value,
                "waited_s": f.waited_s,
                "seed": seed,
            },
        )
        for f in found
        if not math.isnan(f.last_value)
    ]
