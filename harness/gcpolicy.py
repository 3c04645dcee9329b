"""How often the harness's process runs Python's cyclic garbage collector while it works.

A scenario allocates a great deal (frames, records, futures, timers), nearly
all of it acyclic and freed by reference counting the moment it is done with.
At Python's default young-generation threshold (700 allocations), those
allocations also drive the oldest generation's full collections, and each of
those walks every live object: with 10,000 users open that is half a million
objects and up to 0.4 s a pass, 2.8 s in the dozen passes it took to open, use and
close them (``bench/capacity_users.py``). :func:`fewer_collections` raises the threshold
while a scenario runs, so the collector still runs, far less often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young-generation collections while a block of
:func:`fewer_collections` runs (Python's default is 700). Collecting acyclic,
short-lived records every 700 allocations frees nothing the reference counts do
not: it costs about 5% of the CPU per event of a closed loop, and, through the
full collections it triggers, a third of the time it takes to open 10,000 users."""

_relaxed: list[tuple[int, ...]] = []  # the threshold before, once per block running


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the young-generation threshold to :data:`GC_YOUNG_THRESHOLD` for the block.

    Blocks may nest or overlap: the last one to end restores the threshold the
    first one found. Cyclic garbage made in the block is still collected, at the
    raised threshold or after it.
    """
    before = gc.get_threshold()
    if not _relaxed:
        gc.set_threshold(max(before[0], GC_YOUNG_THRESHOLD), *before[1:])
    _relaxed.append(before)
    try:
        yield
    finally:
        first = _relaxed[0]
        _relaxed.pop()
        if not _relaxed:
            gc.set_threshold(*first)
