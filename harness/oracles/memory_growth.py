"""Does the target leak memory per session served? A decision that never cries wolf.

The harness drives the target in cycles of sessions and, at the *idle points*
between cycles (no connections, no runs in flight), records the target's memory
and the cumulative number of sessions served. :func:`decide_memory_growth`
turns those samples into "leaks about N bytes per session" or "flat".

Method, and why each step is there:

1. **Idle samples only** (all samples when fewer than ``min_samples`` are
   idle): memory measured under load includes in-flight buffers, not leaks.
2. **Drop the warm-up**, the first ``warmup_fraction`` of the sessions served:
   caches, pools and JIT/arena growth happen early and are not leaks.
3. **Theil–Sen slope** of memory against sessions (``scipy.stats.theilslopes``):
   the median of pairwise slopes shrugs off RSS spikes and page-granularity
   steps that would drag a least-squares fit.
4. **Confidence interval**: idle samples are autocorrelated (a GC sawtooth,
   allocator state carried from cycle to cycle), so the independence-based
   interval of ``theilslopes`` is too narrow. A seeded moving-block bootstrap of
   the residual series (block length ⌈n^⅓⌉, longer when the residuals are
   strongly autocorrelated; :data:`BOOTSTRAP_RESAMPLES` resamples) keeps that
   dependence; the reported interval is the union of the
   two, the conservative choice.
5. **Persistence**: the post-warm-up samples are split into
   ``persistence_windows`` consecutive windows and each window's own Theil–Sen
   slope must exceed the floor; and the second half of the post-warm-up
   samples, on its own, must have a confidence interval above the floor. A
   cache that warms and then plateaus, or fragmentation that levels off, has a
   steep early window and flat late ones; a leak is steep in every window. The
   second-half interval is there because a window's point slope alone is noisy:
   on synthetic saturating curves the window test alone still let through about
   1 run in 4 whose last window hovered near the floor.

A violation needs both: ``ci_low > floor_bytes_per_session`` *and* persistence.
Everything else is ``flat`` (or ``insufficient_data`` when there is too little
to judge), so the oracle errs toward silence. Growth that is slowing but still
above the floor at the end of the run *is* reported: the data cannot tell
whether it will level off later.

Known limit: a GC sawtooth whose period aliases with the cycle length into one
slow ramp spanning the whole post-warm-up run is, from idle samples alone,
indistinguishable from a leak; more cycles (or cycles of uneven length) fix it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "GrowthDecision",
    "MemorySample",
    "TimelineRow",
    "decide_memory_growth",
    "memory_samples",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

BOOTSTRAP_RESAMPLES = 500
"""Moving-block bootstrap resamples per decision (bounds the cost)."""

MAX_POINTS = 200
"""Longer series are reduced to this many points (medians of consecutive chunks)
before fitting: Theil–Sen and its bootstrap are quadratic in the points."""

_PAIR_BUDGET = 4_000_000  # pairwise slopes held in memory at once by the bootstrap

GrowthStatus = Literal["growth", "flat", "insufficient_data"]


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One reading of the target's memory.

    Attributes:
        elapsed_s: seconds since the run started (monotonic clock).
        sessions: cumulative sessions served when the reading was taken.
        memory_bytes: the target's memory (RSS, or the target's own figure).
        idle: taken at an idle point between cycles (no connections, no runs).
    """

    elapsed_s: float
    sessions: float
    memory_bytes: float
    idle: bool = True


@dataclass(frozen=True, slots=True)
class GrowthDecision:
    """The verdict of :func:`decide_memory_growth`.

    Attributes:
        significant: ``True`` means a ``memory_growth`` violation.
        status: ``"growth"`` exactly when ``significant``; ``"flat"`` when the
            data do not show persistent growth above the floor;
            ``"insufficient_data"`` when there is too little to judge.
        slope_bytes_per_session: Theil–Sen estimate (``nan`` if insufficient).
        ci_low: lower end of the slope's confidence interval (``nan`` if insufficient).
        ci_high: upper end of that interval (``nan`` if insufficient).
        bytes_per_hour: the slope times the observed session rate (``nan`` when
            the samples span no time).
        projected_24h_bytes: ``bytes_per_hour * 24``.
        samples_used: samples fitted (after the idle filter and the warm-up).
        warmup_sessions: cumulative session count where the analysis starts;
            samples before it were warm-up (``nan`` when there were no samples).
        detail: one human line for reports.
    """

    significant: bool
    status: GrowthStatus
    slope_bytes_per_session: float
    ci_low: float
    ci_high: float
    bytes_per_hour: float
    projected_24h_bytes: float
    samples_used: int
    warmup_sessions: float
    detail: str


class TimelineRow(Protocol):
    """Any timeline record with these fields (the sampler's samples qualify)."""

    @property
    def elapsed_s(self) -> float: ...

    @property
    def idle(self) -> bool: ...

    @property
    def values(self) -> Mapping[str, float]: ...


def memory_samples(
    rows: Iterable[TimelineRow], *, memory: str, sessions: str
) -> list[MemorySample]:
    """Memory samples from timeline rows that carry both named values.

    Args:
        rows: timeline records in the order taken.
        memory: the value name holding the memory figure (``"process_rss_bytes"``).
        sessions: the value name holding the cumulative session count.

    Returns:
        One :class:`MemorySample` per row that has both values; other rows are skipped.
    """
    out: list[MemorySample] = []
    for row in rows:
        mem = row.values.get(memory)
        done = row.values.get(sessions)
        if mem is not None and done is not None:
            out.append(MemorySample(row.elapsed_s, float(done), float(mem), row.idle))
    return out


def decide_memory_growth(
    samples: Sequence[MemorySample],
    *,
    floor_bytes_per_session: float = 2048.0,
    confidence: float = 0.95,
    warmup_fraction: float = 0.25,
    min_samples: int = 8,
    persistence_windows: int = 3,
    seed: int = 0,
) -> GrowthDecision:
    """Decide whether memory grows per session served, significantly and persistently.

    Args:
        samples: readings in any order; those with a non-finite field are ignored.
        floor_bytes_per_session: growth at or below this is never a violation.
        confidence: level of the slope's confidence interval, in (0, 1).
        warmup_fraction: leading fraction of the sessions served that is ignored.
        min_samples: fewest samples to judge, after the warm-up is dropped.
        persistence_windows: consecutive post-warm-up windows that must each
            show growth above the floor.
        seed: seeds the bootstrap; the same inputs give the same decision.

    Returns:
        A :class:`GrowthDecision`; ``significant`` is ``True`` only when the
        confidence interval lies wholly above the floor, so does the interval
        of the second half of the analysed samples on its own, and every
        persistence window's slope exceeds the floor.

    Raises:
        ValueError: an option is out of range (the message names it).
    """
    _check_options(
        floor_bytes_per_session, confidence, warmup_fraction, min_samples, persistence_windows
    )
    finite = [
        s
        for s in samples
        if math.isfinite(s.elapsed_s)
        and math.isfinite(s.sessions)
        and math.isfinite(s.memory_bytes)
    ]
    idle = [s for s in finite if s.idle]
    chosen = idle if len(idle) >= min_samples else finite
    # Time order: the bootstrap's blocks must follow the autocorrelation, which is in time.
    chosen.sort(key=lambda s: (s.elapsed_s, s.sessions))
    if not chosen:
        return _insufficient(
            0, math.nan, f"insufficient data: no usable samples (need {min_samples})"
        )

    t = np.array([s.elapsed_s for s in chosen], dtype=np.float64)
    x_raw = np.array([s.sessions for s in chosen], dtype=np.float64)
    y_raw = np.array([s.memory_bytes for s in chosen], dtype=np.float64)
    # Scale by powers of two (exact) so differences cannot overflow whatever the magnitudes.
    ex, ey = _pow2_exponent(x_raw), _pow2_exponent(y_raw)
    x, y = np.ldexp(x_raw, -ex), np.ldexp(y_raw, -ey)

    with np.errstate(all="ignore"):
        lo, hi = float(x.min()), float(x.max())
        start = lo + warmup_fraction * (hi - lo)
        warmup_sessions = float(np.ldexp(start, ex))
        keep = x >= start
        t, x, y = t[keep], x[keep], y[keep]
        used = int(x.size)
        if used < min_samples:
            return _insufficient(
                used,
                warmup_sessions,
                f"insufficient data: {used} usable samples after the warm-up (need {min_samples})",
            )
        if np.unique(x).size < 3:
            return _insufficient(
                used,
                warmup_sessions,
                "insufficient data: fewer than 3 distinct session counts after the warm-up",
            )
        return _decide(
            t,
            x,
            y,
            ex=ex,
            ey=ey,
            used=used,
            warmup_sessions=warmup_sessions,
            floor=floor_bytes_per_session,
            confidence=confidence,
            windows=persistence_windows,
            seed=seed,
        )


def _decide(
    t: FloatArray,
    x: FloatArray,
    y: FloatArray,
    *,
    ex: int,
    ey: int,
    used: int,
    warmup_sessions: float,
    floor: float,
    confidence: float,
    windows: int,
    seed: int,
) -> GrowthDecision:
    rate_per_s = _session_rate(t, x, ex)
    x, y = _reduce(x, y, MAX_POINTS)
    to_bytes = math.ldexp(1.0, ey - ex) if -1000 < ey - ex < 1000 else math.nan

    rng = np.random.default_rng(seed)
    slope_s, low_s, high_s = _interval(x, y, confidence, rng)
    slope, ci_low, ci_high = slope_s * to_bytes, low_s * to_bytes, high_s * to_bytes

    chunks = np.array_split(np.arange(x.size), windows)
    late = slice(x.size // 2, None)
    if any(np.unique(x[c]).size < 2 for c in [*chunks, np.arange(x.size)[late]]):
        return _insufficient(
            used,
            warmup_sessions,
            f"insufficient data: too few distinct session counts to fit {windows} "
            f"persistence windows and the late run to {x.size} samples after the warm-up",
        )
    window_slopes = [_theil_sen(x[c], y[c]) * to_bytes for c in chunks]
    _, late_low_s, late_high_s = _interval(x[late], y[late], confidence, rng)
    late_low, late_high = late_low_s * to_bytes, late_high_s * to_bytes

    per_hour = slope * rate_per_s * 3600.0
    per_day = per_hour * 24.0
    if not all(math.isfinite(v) for v in (slope, ci_low, ci_high)):
        return _insufficient(
            used, warmup_sessions, "insufficient data: the slope is not a finite number"
        )

    clears_floor = ci_low > floor
    persists = late_low > floor and all(w > floor for w in window_slopes)
    significant = clears_floor and persists
    level = f"{confidence * 100:g}% CI"
    estimate = f"about {_per_session(slope, ci_low, ci_high, level)}"
    if significant:
        detail = f"leaks {estimate}"
        if math.isfinite(per_day):
            detail += f", {_signed(per_day)}/24h"
    elif not clears_floor:
        detail = f"flat: {estimate}, not clear of the {_bytes(floor)}/session floor"
    else:
        shown = ", ".join(_bytes(w) for w in window_slopes)
        detail = (
            f"flat: {estimate} overall, but it did not persist: window slopes "
            f"{shown} per session, second half {level} {_bytes(late_low)} to "
            f"{_bytes(late_high)} (floor {_bytes(floor)})"
        )
    return GrowthDecision(
        significant=significant,
        status="growth" if significant else "flat",
        slope_bytes_per_session=slope,
        ci_low=ci_low,
        ci_high=ci_high,
        bytes_per_hour=per_hour,
        projected_24h_bytes=per_day,
        samples_used=used,
        warmup_sessions=warmup_sessions,
        detail=detail,
    )


def _check_options(
    floor: float, confidence: float, warmup: float, min_samples: int, windows: int
) -> None:
    if not (math.isfinite(floor) and floor >= 0.0):
        raise ValueError(f"floor_bytes_per_session must be a finite number >= 0, not {floor!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence!r}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), not {warmup!r}")
    if min_samples < 3:
        raise ValueError(f"min_samples must be at least 3, not {min_samples!r}")
    if windows < 1:
        raise ValueError(f"persistence_windows must be at least 1, not {windows!r}")


def _insufficient(used: int, warmup_sessions: float, detail: str) -> GrowthDecision:
    nan = math.nan
    return GrowthDecision(
        significant=False,
        status="insufficient_data",
        slope_bytes_per_session=nan,
        ci_low=nan,
        ci_high=nan,
        bytes_per_hour=nan,
        projected_24h_bytes=nan,
        samples_used=used,
        warmup_sessions=warmup_sessions,
        detail=detail,
    )


def _pow2_exponent(values: FloatArray) -> int:
    """``e`` such that every ``|v| < 2**e``, so ``v / 2**e`` lies in (-1, 1)."""
    peak = float(np.max(np.abs(values)))
    return math.frexp(peak)[1] if peak > 0.0 else 0


def _session_rate(t: FloatArray, x: FloatArray, ex: int) -> float:
    """Sessions per second over the analysed samples (``nan`` if they span no time)."""
    span_t = float(t.max() - t.min())
    if span_t <= 0.0:
        return math.nan
    return float(np.ldexp(float(x.max() - x.min()), ex)) / span_t


def _reduce(x: FloatArray, y: FloatArray, points: int) -> tuple[FloatArray, FloatArray]:
    """At most ``points`` points: medians of consecutive (time-ordered) chunks."""
    if x.size <= points:
        return x, y
    chunks = np.array_split(np.arange(x.size), points)
    xr = np.array([np.median(x[c]) for c in chunks], dtype=np.float64)
    yr = np.array([np.median(y[c]) for c in chunks], dtype=np.float64)
    return xr, yr


def _pairs(x: FloatArray) -> tuple[IntArray, IntArray, FloatArray]:
    """Index pairs ``i < j`` with ``x[i] != x[j]``, and their ``x[j] - x[i]``."""
    i, j = np.triu_indices(x.size, 1)
    dx = x[j] - x[i]
    keep = dx != 0.0
    return i[keep], j[keep], dx[keep]


def _theil_sen(x: FloatArray, y: FloatArray) -> float:
    i, j, dx = _pairs(x)
    if dx.size == 0:
        return math.nan
    return float(np.median((y[j] - y[i]) / dx))


def _interval(
    x: FloatArray, y: FloatArray, confidence: float, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Theil–Sen slope and the union of its own and the block-bootstrap intervals."""
    fit = stats.theilslopes(y, x, alpha=confidence)
    slope, intercept = float(fit.slope), float(fit.intercept)
    boot = _block_bootstrap(x, y, slope, intercept, rng)
    tail = (1.0 - confidence) / 2.0
    boot_low, boot_high = (float(q) for q in np.quantile(boot, [tail, 1.0 - tail]))
    # The conservative union of the two, and never an interval that excludes the estimate.
    low = min(float(fit.low_slope), boot_low, slope)
    high = max(float(fit.high_slope), boot_high, slope)
    return slope, low, high


def _block_length(residuals: FloatArray) -> int:
    """⌈n^⅓⌉, lengthened when the residuals are strongly autocorrelated.

    For AR(1)-like noise with lag-1 autocorrelation ρ, Carlstein's (1986)
    plug-in block length is (√6·ρ / (1 − ρ²))^⅔ · n^⅓; taking the larger of the
    two keeps ⌈n^⅓⌉ for nearly independent noise and widens the interval when
    allocator state carries over from cycle to cycle. ρ is clipped to
    [0, 0.95]; the block is at most n/2, so there are blocks to draw.
    """
    n = int(residuals.size)
    cube_root = math.pow(n, 1.0 / 3.0)
    block = math.ceil(cube_root)
    centred = residuals - residuals.mean()
    energy = float(centred @ centred)
    if n >= 4 and energy > 0.0:
        rho = min(0.95, max(0.0, float(centred[1:] @ centred[:-1]) / energy))
        ratio = math.sqrt(6.0) * rho / (1.0 - rho * rho)
        block = max(block, math.ceil(math.pow(ratio, 2.0 / 3.0) * cube_root))
    return max(1, min(block, n // 2))


def _block_bootstrap(
    x: FloatArray, y: FloatArray, slope: float, intercept: float, rng: np.random.Generator
) -> FloatArray:
    """Theil–Sen slopes of the fit plus moving-block resamples of its residuals.

    Blocks of consecutive residuals (:func:`_block_length`), drawn with
    replacement and concatenated, keep the short-range dependence of the noise
    that an i.i.d. resample would destroy (Künsch 1989).
    """
    n = x.size
    residuals = y - (intercept + slope * x)
    block = _block_length(residuals)
    n_blocks = math.ceil(n / block)
    i, j, dx = _pairs(x)
    out = np.empty(BOOTSTRAP_RESAMPLES, dtype=np.float64)
    batch = max(1, _PAIR_BUDGET // max(1, dx.size))
    offsets = np.arange(block)
    for first in range(0, BOOTSTRAP_RESAMPLES, batch):
        size = min(batch, BOOTSTRAP_RESAMPLES - first)
        starts = rng.integers(0, n - block + 1, size=(size, n_blocks))
        index = (starts[:, :, None] + offsets).reshape(size, -1)[:, :n]
        r = residuals[index]
        # The fitted line contributes exactly ``slope`` to every pairwise slope.
        out[first : first + size] = slope + np.median((r[:, j] - r[:, i]) / dx, axis=1)
    return out


_UNITS = (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10))


def _unit(*values: float) -> tuple[str, float]:
    peak = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    for name, size in _UNITS:
        if peak >= size:
            return name, size
    return "B", 1.0


def _number(value: float, size: float) -> str:
    return f"{value:.0f}" if size == 1.0 else f"{value / size:.1f}"


def _bytes(value: float) -> str:
    name, size = _unit(value)
    return f"{_number(value, size)} {name}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "-") + _bytes(abs(value))


def _per_session(slope: float, low: float, high: float, level: str) -> str:
    """``16.2 KiB per session (95% CI 14.9–17.5 KiB)`` in one unit."""
    name, size = _unit(slope, low, high)
    sep = " to " if low < 0 else "–"
    return (
        f"{_number(slope, size)} {name} per session "
        f"({level} {_number(low, size)}{sep}{_number(high, size)} {name})"
    )
