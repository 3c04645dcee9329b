"""The resource_leak decision: gauges must return to idle soon after the harness goes quiet."""

from __future__ import annotations

import math
import re

import pytest

from harness.oracles.resource_leak import (
    GaugeFinding,
    GaugeSample,
    decide_resource_leak,
    gauge_samples,
)
from harness.probes.sampler import TimelineSample


def series(*points: tuple[float, dict[str, float]]) -> list[GaugeSample]:
    return [GaugeSample(t, values) for t, values in points]


def test_a_gauge_back_to_idle_within_the_grace_period_is_no_finding():
    samples = series(
        (9.0, {"connections": 40}),
        (10.0, {"connections": 12}),
        (12.0, {"connections": 0}),
        (20.0, {"connections": 0}),
    )

    assert decide_resource_leak(samples, idle_values={"connections": 0}, quiet_since_s=10.0) == []


def test_a_gauge_that_stays_above_idle_is_a_finding():
    samples = series(
        (10.0, {"connections": 12}),
        (13.0, {"connections": 3}),
        (18.5, {"connections": 3}),
    )

    findings = decide_resource_leak(samples, idle_values={"connections": 0}, quiet_since_s=10.0)

    assert findings == [
        GaugeFinding(
            gauge="connections",
            idle_value=0,
            last_value=3.0,
            waited_s=8.5,
            detail="connections was still 3 (idle 0) 8.5s after the harness went quiet (grace 5s)",
        )
    ]


def test_reaching_idle_only_after_the_grace_period_is_a_finding():
    samples = series(
        (10.0, {"subscriptions": 5}),
        (14.0, {"subscriptions": 5}),
        (16.0, {"subscriptions": 0}),
    )

    findings = decide_resource_leak(samples, idle_values={"subscriptions": 0}, quiet_since_s=10.0)

    assert [f.gauge for f in findings] == ["subscriptions"]
    assert findings[0].last_value == 0.0


def test_the_grace_period_is_an_option():
    samples = series((10.0, {"subscriptions": 5}), (16.0, {"subscriptions": 0}))

    assert (
        decide_resource_leak(
            samples, idle_values={"subscriptions": 0}, quiet_since_s=10.0, grace_s=6.0
        )
        == []
    )


def test_a_first_reading_after_a_sampling_gap_gets_the_benefit_of_the_doubt():
    samples = series((30.0, {"connections": 0}))

    assert decide_resource_leak(samples, idle_values={"connections": 0}, quiet_since_s=10.0) == []


def test_no_reading_after_quiet_is_a_finding():
    samples = series((5.0, {"connections": 0}), (12.0, {"goroutines": 10}))

    findings = decide_resource_leak(samples, idle_values={"connections": 0}, quiet_since_s=10.0)

    assert len(findings) == 1
    assert findings[0].gauge == "connections"
    assert math.isnan(findings[0].last_value)
    assert findings[0].waited_s == 2.0
    assert findings[0].detail == (
        "connections: no reading after the harness went quiet at 10.0s, "
        "so its return to 0 is unproven"
    )


def test_readings_before_quiet_do_not_count():
    samples = series((9.0, {"connections": 0}), (11.0, {"connections": 2}))

    findings = decide_resource_leak(samples, idle_values={"connections": 0}, quiet_since_s=10.0)

    assert [f.gauge for f in findings] == ["connections"]


def test_below_idle_counts_as_idle_and_unnamed_gauges_are_not_judged():
    samples = series((11.0, {"goroutines": 9, "fds": 500}))

    assert decide_resource_leak(samples, idle_values={"goroutines": 10}, quiet_since_s=10.0) == []


def test_non_finite_readings_are_ignored_and_findings_are_sorted_by_gauge():
    samples = series(
        (11.0, {"b": math.nan, "a": 3}),
        (12.0, {"b": 4, "a": 3}),
    )

    findings = decide_resource_leak(samples, idle_values={"b": 0, "a": 0}, quiet_since_s=10.0)

    assert [(f.gauge, f.last_value) for f in findings] == [("a", 3.0), ("b", 4.0)]


def test_samples_may_come_in_any_order():
    samples = series((16.0, {"c": 4}), (12.0, {"c": 0}), (11.0, {"c": 4}))

    assert decide_resource_leak(samples, idle_values={"c": 0}, quiet_since_s=10.0) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grace_s": -1.0}, "grace_s must be a finite number >= 0, not -1.0"),
        ({"quiet_since_s": math.inf}, "quiet_since_s must be a finite number, not inf"),
    ],
)
def test_bad_options_are_refused(options, message):
    kwargs = {"idle_values": {"c": 0}, "quiet_since_s": 0.0, **options}
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        decide_resource_leak([], **kwargs)
    assert str(caught.value) == message


def test_gauge_samples_come_from_timeline_samples():
    row = TimelineSample(
        t=1e9, elapsed_s=3.5, phase="drain", idle=True, values={"connections": 1.0}, errors=()
    )

    assert gauge_samples([row]) == [GaugeSample(3.5, {"connections": 1.0})]
