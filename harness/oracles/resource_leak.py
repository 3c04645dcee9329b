"""Do the target's resource gauges return to idle once everyone has left?

Once the harness goes quiet (every user disconnected, every run finished), a
gauge such as open connections, subscriptions, goroutines or file descriptors
must come back to its idle value within a grace period. One that does not is
holding on to something for a user who is gone: a ``resource_leak``.

The rule, per gauge named in ``idle_values``, looking only at samples taken at
or after ``quiet_since_s``:

* it *settled* when some sample taken no later than ``quiet_since_s + grace_s``
  is at or below its idle value; or, when the first sample after quiet came
  only after the grace period, when that first sample is (the target gets the
  benefit of the doubt for a gap in the sampling, never a finding for it);
* otherwise, including when no sample after quiet carries the gauge, it is a
  finding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.oracles.memory_growth import TimelineRow

__all__ = ["GaugeFinding", "GaugeSample", "decide_resource_leak", "gauge_samples"]


@dataclass(frozen=True, slots=True)
class GaugeSample:
    """Gauge readings taken together.

    Attributes:
        elapsed_s: seconds since the run started (monotonic clock).
        values: gauge name → value.
    """

    elapsed_s: float
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class GaugeFinding:
    """A gauge that did not return to idle after the harness went quiet.

    Attributes:
        gauge: the gauge's name.
        idle_value: the value it should have come back to (at most).
        last_value: its last reading after quiet (``nan`` when there was none).
        waited_s: from quiet to the last reading of any gauge (how long we watched).
        detail: one human line for reports.
    """

    gauge: str
    idle_value: float
    last_value: float
    waited_s: float
    detail: str


def gauge_samples(rows: Iterable[TimelineRow]) -> list[GaugeSample]:
    """Gauge samples from timeline rows (the sampler's samples qualify)."""
    return [GaugeSample(row.elapsed_s, dict(row.values)) for row in rows]


def decide_resource_leak(
    samples: Sequence[GaugeSample],
    *,
    idle_values: Mapping[str, float],
    quiet_since_s: float,
    grace_s: float = 5.0,
) -> list[GaugeFinding]:
    """Find gauges that did not return to their idle value after quiet.

    Args:
        samples: readings in any order; non-finite values are ignored.
        idle_values: gauge name → the value it must come back to (or below).
            Gauges not named here are not judged.
        quiet_since_s: elapsed time at which every user had disconnected and
            every run had finished.
        grace_s: how long after quiet each gauge has to settle.

    Returns:
        One :class:`GaugeFinding` per gauge that did not settle, sorted by name;
        empty when all did.

    Raises:
        ValueError: ``grace_s`` is negative or not finite, or ``quiet_since_s``
            is not finite.
    """
    if not (math.isfinite(grace_s) and grace_s >= 0.0):
        raise ValueError(f"grace_s must be a finite number >= 0, not {grace_s!r}")
    if not math.isfinite(quiet_since_s):
        raise ValueError(f"quiet_since_s must be a finite number, not {quiet_since_s!r}")
    after = sorted(
        (s for s in samples if math.isfinite(s.elapsed_s) and s.elapsed_s >= quiet_since_s),
        key=lambda s: s.elapsed_s,
    )
    deadline = quiet_since_s + grace_s
    waited = after[-1].elapsed_s - quiet_since_s if after else 0.0
    findings: list[GaugeFinding] = []
    for gauge in sorted(idle_values):
        idle = idle_values[gauge]
        readings = [
            (s.elapsed_s, float(v))
            for s in after
            if (v := s.values.get(gauge)) is not None and math.isfinite(v)
        ]
        if not readings:
            findings.append(
                GaugeFinding(
                    gauge,
                    idle,
                    math.nan,
                    waited,
                    f"{gauge}: no reading after the harness went quiet at "
                    f"{quiet_since_s:.1f}s, so its return to {idle:g} is unproven",
                )
            )
            continue
        if _settled(readings, idle, deadline):
            continue
        last_t, last = readings[-1]
        findings.append(
            GaugeFinding(
                gauge,
                idle,
                last,
                waited,
                f"{gauge} was still {last:g} (idle {idle:g}) "
                f"{last_t - quiet_since_s:.1f}s after the harness went quiet "
                f"(grace {grace_s:g}s)",
            )
        )
    return findings


def _settled(readings: Sequence[tuple[float, float]], idle: float, deadline: float) -> bool:
    first_t, first = readings[0]
    if first_t > deadline:
        return first <= idle
    return any(value <= idle for t, value in readings if t <= deadline)
