"""The memory_growth decision: finds real per-session leaks, never cries wolf.

The synthetic series imitate idle-point samples of a real service: a base
RSS, a GC sawtooth (garbage piling up per session and collected at a jittered
threshold, so each idle sample catches it at some phase), Gaussian jitter,
occasional transient spikes, page-granularity rounding, sessions per cycle
that vary, and non-idle samples taken under load.
"""

from __future__ import annotations

import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from harness.oracles.memory_growth import (
    GrowthDecision,
    MemorySample,
    decide_memory_growth,
    memory_samples,
)

KiB = 1024.0
MiB = 1024.0 * KiB
FLOOR = 2048.0


def synth(
    seed: int,
    *,
    leak: float = 0.0,
    cycles: int = 60,
    per_cycle: int = 50,
    sawtooth: float = 6 * MiB,
    jitter: float = 256 * KiB,
    spike_rate: float = 0.03,
    plateau: float = 0.0,
    fragmentation: float = 0.0,
    fragmentation_tau: float = 0.1,
    busy: bool = True,
    base: float = 180 * MiB,
) -> list[MemorySample]:
    """Idle-point samples (plus busy ones) of a simulated service.

    Args:
        leak: bytes leaked per session.
        sawtooth: garbage level at which the GC fires (memory swings 0..sawtooth).
        plateau: a cache warming logistically to this many bytes, saturated by
            half the run.
        fragmentation: allocator growth ``A·(1 - exp(-s / (tau·N)))`` that
            levels off, reached in 1 MiB arena steps.
    """
    rng = np.random.default_rng(seed)
    total = cycles * per_cycle
    garbage = rng.uniform(0, sawtooth)
    threshold = sawtooth * rng.uniform(0.8, 1.0)
    sessions = 0
    t = 0.0
    out = []
    for cycle in range(cycles + 1):
        if cycle:
            n = int(rng.integers(int(per_cycle * 0.8), int(per_cycle * 1.2) + 1))
            for _ in range(n):
                garbage += sawtooth / 37.0 * rng.uniform(0.5, 1.5)
                if garbage > threshold:
                    garbage = rng.uniform(0, 0.05) * sawtooth
                    threshold = sawtooth * rng.uniform(0.8, 1.0)
            sessions += n
            t += 20.0 * rng.uniform(0.9, 1.1)
            if busy:  # under load: connection buffers, in-flight runs
                in_flight = base + leak * sessions + 60 * MiB * rng.uniform(0.5, 1.5)
                out.append(MemorySample(t - 5.0, sessions - n / 2, in_flight, idle=False))
        memory = base + leak * sessions + garbage + rng.normal(0, jitter)
        if plateau:
            memory += plateau / (1 + math.exp(-(sessions - 0.25 * total) / (0.04 * total)))
        if fragmentation:
            grown = fragmentation * (1 - math.exp(-sessions / (fragmentation_tau * total)))
            memory += math.floor(grown / MiB) * MiB
        if rng.uniform() < spike_rate:
            memory += rng.uniform(20, 60) * MiB
        memory = math.ceil(memory / 4096) * 4096  # RSS counts whole pages
        out.append(MemorySample(t, float(sessions), float(memory)))
    return out


def line(slope_per_session: float, *, n: int = 20, step: float = 100, dt: float = 10.0):
    """A noise-free series: 100 MiB + slope × sessions, ``step`` sessions per ``dt`` s."""
    return [
        MemorySample(i * dt, i * step, 100 * MiB + slope_per_session * i * step) for i in range(n)
    ]


# --- leaks are found, with the right size ------------------------------------------------


@pytest.mark.parametrize(
    ("leak", "cycles"),
    [(64 * KiB, 60), (16 * KiB, 60), (4 * KiB, 150)],
    ids=["64KiB", "16KiB", "4KiB"],
)
@pytest.mark.parametrize("seed", range(5))
def test_a_per_session_leak_is_significant_and_sized_within_25_percent(leak, cycles, seed):
    decision = decide_memory_growth(synth(seed, leak=leak, cycles=cycles), seed=seed)

    assert decision.significant
    assert decision.status == "growth"
    assert abs(decision.slope_bytes_per_session / leak - 1) <= 0.25
    assert decision.ci_low > FLOOR
    assert decision.ci_low <= decision.slope_bytes_per_session <= decision.ci_high
    assert decision.detail.startswith("leaks about ")
    assert decision.projected_24h_bytes > 0


def test_the_detail_line_reads_the_slope_its_interval_and_the_24h_projection():
    # 16 KiB per session at 10 sessions/s: 16 KiB × 36 000 × 24 = 13.18 GiB a day.
    decision = decide_memory_growth(line(16 * KiB))

    assert (
        decision.detail == "leaks about 16.0 KiB per session (95% CI 16.0–16.0 KiB), +13.2 GiB/24h"
    )
    assert decision.slope_bytes_per_session == pytest.approx(16 * KiB)
    assert decision.bytes_per_hour == pytest.approx(16 * KiB * 36_000)
    assert decision.projected_24h_bytes == pytest.approx(16 * KiB * 36_000 * 24)
    assert decision.samples_used == 15  # sessions 500..1900: the first quarter is warm-up
    assert decision.warmup_sessions == pytest.approx(475.0)


def test_a_leak_just_under_the_floor_is_not_a_violation():
    decision = decide_memory_growth(line(FLOOR * 0.99))

    assert not decision.significant
    assert decision.status == "flat"
    assert decision.detail == (
        "flat: about 2.0 KiB per session (95% CI 2.0–2.0 KiB), "
        "not clear of the 2.0 KiB/session floor"
    )


def test_the_floor_is_an_option():
    assert not decide_memory_growth(line(16 * KiB), floor_bytes_per_session=32 * KiB).significant
    assert decide_memory_growth(line(16 * KiB), floor_bytes_per_session=8 * KiB).significant


# --- never cry wolf -----------------------------------------------------------------------


def test_a_flat_noisy_series_is_not_significant():
    decision = decide_memory_growth(synth(3))

    assert not decision.significant
    assert decision.status == "flat"
    assert decision.ci_low < FLOOR
    assert decision.detail.startswith("flat: about ")


def test_no_false_alarm_in_200_flat_noisy_runs():
    alarms = [
        seed
        for seed in range(200)
        if decide_memory_growth(synth(seed, cycles=40), seed=seed).significant
    ]
    assert alarms == []


@pytest.mark.parametrize("seed", range(20))
def test_a_gc_sawtooth_of_30_mib_without_trend_is_not_significant(seed):
    decision = decide_memory_growth(synth(seed, sawtooth=30 * MiB), seed=seed)

    assert not decision.significant


def test_a_cache_that_warms_to_a_plateau_is_not_significant():
    decisions = [decide_memory_growth(synth(s, plateau=400 * MiB), seed=s) for s in range(20)]

    assert [d.significant for d in decisions] == [False] * 20
    # The overall slope alone would have cried wolf: persistence is what rejects these.
    fooled = [d for d in decisions if d.ci_low > FLOOR]
    assert len(fooled) >= 5
    assert "did not persist" in fooled[0].detail


def test_fragmentation_that_levels_off_is_not_significant():
    decisions = [decide_memory_growth(synth(s, fragmentation=300 * MiB), seed=s) for s in range(20)]

    assert [d.significant for d in decisions] == [False] * 20
    assert sum(d.ci_low > FLOOR for d in decisions) >= 5


def test_growth_that_stops_in_the_last_window_is_not_significant():
    # Clean 64 KiB/session growth for three quarters of the run, then flat.
    samples = [
        MemorySample(i * 10.0, i * 100.0, 100 * MiB + 64 * KiB * min(i, 30) * 100)
        for i in range(40)
    ]
    decision = decide_memory_growth(samples)

    assert decision.ci_low > FLOOR
    assert not decision.significant
    assert decision.status == "flat"
    assert "did not persist: window slopes 64.0 KiB, 64.0 KiB, 0 B per session" in decision.detail


def test_busy_samples_are_ignored_when_there_are_enough_idle_ones():
    flat = synth(5, busy=False)
    # Samples under load that climb steeply: memory held by in-flight sessions.
    busy = [
        MemorySample(s.elapsed_s - 1, s.sessions, s.memory_bytes + s.sessions * 64 * KiB, False)
        for s in flat
    ]
    decision = decide_memory_growth(flat + busy)

    assert not decision.significant
    assert decision.samples_used < len(flat)


def test_with_too_few_idle_samples_every_sample_is_used():
    samples = [
        MemorySample(s.elapsed_s, s.sessions, s.memory_bytes, idle=False) for s in line(16 * KiB)
    ]

    assert decide_memory_growth(samples).significant


def wandering(seed: int, *, phi: float = 0.9, sd: float = 4 * MiB) -> list[MemorySample]:
    """No trend, but AR(1) noise: allocator state carried over from cycle to cycle."""
    rng = np.random.default_rng(seed)
    level, out = 0.0, []
    for i in range(61):
        level = phi * level + rng.normal(0, sd * math.sqrt(1 - phi * phi))
        out.append(MemorySample(i * 20.0, i * 50.0, 200 * MiB + level))
    return out


def test_autocorrelated_noise_widens_the_interval_beyond_theilslopes_own():
    ratios = []
    for seed in range(10):
        samples = wandering(seed)
        decision = decide_memory_growth(samples, seed=seed)
        post = [s for s in samples if s.sessions >= decision.warmup_sessions]
        naive = stats.theilslopes([s.memory_bytes for s in post], [s.sessions for s in post])
        ratios.append((decision.ci_high - decision.ci_low) / (naive.high_slope - naive.low_slope))
    # theilslopes assumes independent samples; the block bootstrap does not.
    assert min(ratios) >= 1.0
    assert statistics.median(ratios) >= 1.25


def test_no_false_alarm_in_100_runs_of_slowly_wandering_memory():
    alarms = [s for s in range(100) if decide_memory_growth(wandering(s), seed=s).significant]
    assert alarms == []


# --- too little to judge ------------------------------------------------------------------


def test_too_few_samples_are_insufficient_data():
    decision = decide_memory_growth(line(64 * KiB, n=8))

    assert decision.status == "insufficient_data"
    assert not decision.significant
    assert math.isnan(decision.slope_bytes_per_session)
    assert decision.samples_used == 6
    assert decision.detail == "insufficient data: 6 usable samples after the warm-up (need 8)"


def test_no_samples_are_insufficient_data():
    decision = decide_memory_growth([])

    assert decision.status == "insufficient_data"
    assert decision.detail == "insufficient data: no usable samples (need 8)"


def test_samples_without_new_sessions_are_insufficient_data():
    samples = [MemorySample(float(i), 100.0, 100 * MiB + i * MiB) for i in range(30)]

    decision = decide_memory_growth(samples)

    assert decision.status == "insufficient_data"
    assert not decision.significant


def test_non_finite_samples_are_ignored():
    samples = line(16 * KiB) + [MemorySample(math.nan, 5.0, 1.0), MemorySample(1.0, 2.0, math.inf)]

    assert decide_memory_growth(samples) == decide_memory_growth(line(16 * KiB))


def test_the_same_seed_gives_the_same_decision():
    samples = synth(11, leak=4 * KiB)

    assert decide_memory_growth(samples, seed=7) == decide_memory_growth(samples, seed=7)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "floor_bytes_per_session",
            -1.0,
            "floor_bytes_per_session must be a finite number >= 0, not -1.0",
        ),
        ("confidence", 1.0, "confidence must lie strictly between 0 and 1, not 1.0"),
        ("warmup_fraction", 1.0, "warmup_fraction must lie in [0, 1), not 1.0"),
        ("min_samples", 2, "min_samples must be at least 3, not 2"),
        ("persistence_windows", 0, "persistence_windows must be at least 1, not 0"),
    ],
)
def test_options_out_of_range_are_refused(option, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        decide_memory_growth(line(0.0), **{option: value})
    assert str(caught.value) == message


# --- well-formed whatever the input -------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
samples_strategy = st.lists(
    st.builds(MemorySample, finite, finite, finite, st.booleans()), max_size=60
)


def check_well_formed(decision: GrowthDecision, given: int) -> None:
    assert decision.status in ("growth", "flat", "insufficient_data")
    assert decision.significant == (decision.status == "growth")
    assert 0 <= decision.samples_used <= given
    assert isinstance(decision.detail, str)
    assert "\n" not in decision.detail
    if decision.status == "insufficient_data":
        assert math.isnan(decision.slope_bytes_per_session)
    else:
        assert decision.ci_low <= decision.slope_bytes_per_session <= decision.ci_high
    if decision.significant:
        assert decision.ci_low > FLOOR


@settings(max_examples=150, deadline=None)
@given(samples_strategy)
def test_any_finite_samples_give_a_well_formed_decision(samples):
    check_well_formed(decide_memory_growth(samples), len(samples))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1e6),
            st.floats(0, 1e7),
            st.floats(0, 1e13),
        ),
        min_size=8,
        max_size=80,
    )
)
def test_realistic_ranges_give_a_well_formed_decision(rows):
    samples = [MemorySample(t, s, m) for t, s, m in rows]
    check_well_formed(decide_memory_growth(samples), len(samples))


# --- from the timeline --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    elapsed_s: float
    idle: bool
    values: dict[str, float]


def test_memory_samples_takes_rows_that_carry_both_values():
    rows = [
        Row(1.0, True, {"rss": 10.0, "sessions": 0.0}),
        Row(2.0, False, {"rss": 12.0}),
        Row(3.0, False, {"rss": 11.0, "sessions": 5.0, "fds": 9.0}),
    ]

    assert memory_samples(rows, memory="rss", sessions="sessions") == [
        MemorySample(1.0, 0.0, 10.0, True),
        MemorySample(3.0, 5.0, 11.0, False),
    ]


def test_the_oracles_import_no_io_and_no_pytest():
    code = (
        "import sys, harness.oracles.memory_growth, harness.oracles.resource_leak\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'websockets', 'pytest', 'psutil', 'prometheus_client', 'asyncio'} "
        "or m.startswith('harness.probes'))\n"
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
