"""Condition coverage: a clean verdict is only worth the conditions it created.

Each scenario declares the conditions isolation bugs need (overlap, shared
ids, disconnects mid-run …) and counts how often it created them. A scenario
that created none of a declared condition proves nothing about it: the run is
``inconclusive``, never a pass.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

CONDITIONS: tuple[str, ...] = (
    "overlapping_runs",
    "shared_identifiers",
    "disconnects_mid_run",
    "reconnects",
    "cross_user_probes",
    "same_path_concurrent_reads",
    "requests_cancelled_mid_flight",
    "bad_frames_interleaved",
    "shared_message_ids",
    "reads_after_delete",
)
"""Every condition a scenario can declare, in report order."""

DESCRIPTIONS: dict[str, str] = {
    "overlapping_runs": "runs that overlapped another user's run",
    "shared_identifiers": "thread ids and state keys used by more than one user",
    "disconnects_mid_run": "disconnects after a message was sent, before its last event",
    "reconnects": "connections reopened after a disconnect",
    "cross_user_probes": "reads of another user's resource id judged under positive controls",
    "same_path_concurrent_reads": "reads of one path by different users at the same moment",
    "requests_cancelled_mid_flight": (
        "HTTP requests abandoned before their answer while others read"
    ),
    "bad_frames_interleaved": (
        "frames the target must refuse, carrying their sender's canary, sent while another "
        "user's run was in flight"
    ),
    "shared_message_ids": "message ids used by more than one user",
    "reads_after_delete": (
        "reads of a state key by its owner just after deleting it, a key other users also wrote"
    ),
}


def count_overlapping(intervals: Sequence[tuple[Hashable, float, float]]) -> int:
    """How many ``(owner, start, end)`` intervals overlap an interval of another owner."""
    ordered = sorted(intervals, key=lambda item: item[1])
    overlapping = [False] * len(ordered)
    for i, (owner, start, end) in enumerate(ordered):
        for j in range(i + 1, len(ordered)):
            other, other_start, other_end = ordered[j]
            if other_start >= end:
                break
            if other != owner and other_end > start:
                overlapping[i] = overlapping[j] = True
    return sum(overlapping)


def count_during(
    points: Iterable[tuple[Hashable, float]], intervals: Sequence[tuple[Hashable, float, float]]
) -> int:
    """How many ``(owner, time)`` points fall inside an interval of another owner.

    One pass over the intervals by start, keeping the latest end so far and the
    latest of any other owner, then a binary search per point: a long mixed load
    has thousands of both.
    """
    ordered = sorted(intervals, key=lambda item: item[1])
    starts = [start for _, start, _ in ordered]
    # latest[i]: ((end, owner) latest among ordered[: i + 1], the latest end of another owner)
    latest: list[tuple[tuple[float, Hashable], float]] = []
    first: tuple[float, Hashable] = (-math.inf, None)
    second = -math.inf
    for owner, _, end in ordered:
        if end > first[0]:
            if owner != first[1]:
                second = first[0]
            first = (end, owner)
        elif owner != first[1] and end > second:
            second = end
        latest.append((first, second))
    count = 0
    for owner, at in points:
        started = bisect.bisect_left(starts, at)  # the intervals that began before ``at``
        if started:
            (end, whose), other_end = latest[started - 1]
            count += (end if whose != owner else other_end) > at
    return count


def shared_identifiers(uses: Iterable[tuple[Hashable, str]]) -> int:
    """How many identifiers appear with more than one owner in ``(owner, id)`` pairs."""
    owners: dict[str, set[Hashable]] = {}
    for owner, ident in uses:
        owners.setdefault(ident, set()).add(owner)
    return sum(1 for who in owners.values() if len(who) > 1)


def missing(declared: Iterable[str], counts: Counter[str]) -> list[str]:
    """The declared conditions a scenario never created."""
    return [name for name in declared if counts[name] <= 0]
