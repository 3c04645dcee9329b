"""Condition coverage arithmetic."""

from __future__ import annotations

import random
from collections import Counter

from harness.coverage import count_during, count_overlapping, missing, shared_identifiers


def test_overlap_counts_only_runs_of_different_owners():
    assert count_overlapping([("a", 0, 2), ("a", 1, 3)]) == 0
    assert count_overlapping([("a", 0, 2), ("b", 1, 3), ("c", 5, 6)]) == 2
    assert count_overlapping([("a", 0, 1), ("b", 1, 2)]) == 0  # touching is not overlapping


def test_long_run_overlaps_many_short_ones():
    spans = [("a", 0, 100)] + [("b", float(i), i + 0.5) for i in range(10)]
    assert count_overlapping(spans) == 11


def test_points_count_only_inside_another_owners_interval():
    runs = [("a", 0.0, 2.0), ("b", 3.0, 4.0)]
    assert count_during([("a", 1.0)], runs) == 0  # its own run
    assert count_during([("b", 1.0), ("b", 2.0), ("b", 2.5)], runs) == 1  # ends are outside
    assert count_during([("c", 1.0), ("c", 3.5), ("c", 9.0)], runs) == 2


def test_shared_identifiers_need_two_owners():
    assert shared_identifiers([("a", "main"), ("b", "main"), ("a", "x"), ("a", "x")]) == 1


def test_missing_conditions():
    assert missing(["reconnects", "overlapping_runs"], Counter(overlapping_runs=3)) == [
        "reconnects"
    ]


def test_count_during_is_the_count_of_points_inside_another_owners_interval():
    rng = random.Random(7)
    for _ in range(300):
        runs = [
            (rng.choice("abc"), s, s + rng.uniform(0, 3))
            for s in (rng.uniform(0, 10) for _ in range(rng.randint(0, 12)))
        ]
        points = [(rng.choice("abc"), rng.uniform(-1, 12)) for _ in range(rng.randint(0, 8))]
        inside = sum(any(o != who and s < at < e for o, s, e in runs) for who, at in points)
        assert count_during(points, runs) == inside, (points, runs)
