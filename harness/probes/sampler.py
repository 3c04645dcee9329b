"""Poll probes on a timer and at idle points, writing ``timeline.jsonl`` as it goes.

Each sample is one JSON object per line, flushed when written::

    {"t": 1732460000.123, "elapsed_s": 12.5, "phase": "cycle 3", "idle": true,
     "values": {"process_rss_bytes": 52428800.0, "sessions": 150}, "errors": []}

``t`` is wall-clock epoch seconds (for humans and other logs); ``elapsed_s``
is monotonic seconds since the run started (for the oracles). A source that
fails, hangs past its timeout or returns a non-number adds a line to
``errors`` and the sampler carries on: a flaky ``/metrics`` must not end a
soak, and the error is on record rather than swallowed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import UsageError

__all__ = ["TIMELINE_NAME", "Sampler", "Source", "TimelineSample"]

TIMELINE_NAME = "timeline.jsonl"

Source = Callable[[], Awaitable[Mapping[str, float]]]
"""A probe: ``await source()`` → value name → number."""


@dataclass(frozen=True, slots=True)
class TimelineSample:
    """One line of ``timeline.jsonl``.

    Attributes:
        t: wall-clock epoch seconds when the sample began.
        elapsed_s: monotonic seconds since the run started.
        phase: what the harness was doing (``"cycle 3"``, ``"idle"``, ``"run"``).
        idle: taken at an idle point (no connections, no runs in flight).
        values: value name → finite number, from the sources and ``extra``.
        errors: one line per source that failed this time.
    """

    t: float
    elapsed_s: float
    phase: str
    idle: bool
    values: Mapping[str, float]
    errors: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the timeline."""
        return {
            "t": self.t,
            "elapsed_s": self.elapsed_s,
            "phase": self.phase,
            "idle": self.idle,
            "values": dict(self.values),
            "errors": list(self.errors),
        }


class Sampler:
    """Samples named sources into ``timeline.jsonl`` and a bounded in-memory list.

    Args:
        sources: ``(name, source)`` pairs, or a mapping name → source. Names
            appear in error lines; value names come from the sources and must
            not collide (the first source's value is kept, the clash recorded).
        path: the timeline file; appended to, parent directories created.
        started_at: ``time.monotonic()`` at the run's start (default: now).
        source_timeout_s: a source that takes longer is recorded as an error.
        max_samples: samples kept in memory (oldest dropped); the file keeps all.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, Source]] | Mapping[str, Source],
        path: str | os.PathLike[str],
        *,
        started_at: float | None = None,
        source_timeout_s: float = 5.0,
        max_samples: int = 100_000,
    ) -> None:
        pairs = list(sources.items()) if isinstance(sources, Mapping) else list(sources)
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise UsageError(f"source names must be unique, got {names!r}")
        if not (math.isfinite(source_timeout_s) and source_timeout_s > 0):
            raise UsageError(
                f"source_timeout_s must be a positive number, not {source_timeout_s!r}"
            )
        if max_samples < 1:
            raise UsageError(f"max_samples must be at least 1, not {max_samples!r}")
        self.path = Path(path)
        self.phase = "run"  # recorded by run()'s samples; the harness updates it
        self._sources = pairs
        self._timeout_s = source_timeout_s
        self._started_at = time.monotonic() if started_at is None else started_at
        self._samples: deque[TimelineSample] = deque(maxlen=max_samples)
        self._lock = asyncio.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def __enter__(self) -> Sampler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the timeline file; idempotent. Samples stay readable."""
        self._file.close()

    @property
    def samples(self) -> list[TimelineSample]:
        """The samples kept in memory, oldest first (a copy)."""
        return list(self._samples)

    async def sample_now(
        self, phase: str, idle: bool, *, extra: Mapping[str, float] | None = None
    ) -> TimelineSample:
        """Read every source now (concurrently), record and return the sample.

        Samples never overlap: one waits for any sample in progress, so an
        idle-point sample does not race the timer's.

        Args:
            phase: recorded as the sample's phase.
            idle: whether this is an idle point between cycles.
            extra: values the harness itself knows (``{"sessions": 150}``),
                recorded alongside the sources' values.

        Returns:
            The sample, as written to the timeline.

        Raises:
            UsageError: the sampler is closed.
            OSError: the timeline could not be written (never swallowed).
        """
        if self._file.closed:
            raise UsageError("the sampler is closed; sample before calling close()")
        async with self._lock:
            wall, began = time.time(), time.monotonic()
            results = await asyncio.gather(*(self._read(name, src) for name, src in self._sources))
            values: dict[str, float] = {}
            origin: dict[str, str] = {}
            errors: list[str] = []
            for source, found in [
                ("harness", extra or {}),
                *zip(self._sources_names(), results, strict=True),
            ]:
                if isinstance(found, str):
                    errors.append(found)
                    continue
                for key, value in found.items():
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        errors.append(f"{source}: value {key!r} is {value!r}, not a number")
                    elif not math.isfinite(value):
                        errors.append(f"{source}: value {key!r} is {value!r}, not finite")
                    elif key in values:
                        errors.append(
                            f"{source}: value {key!r} also comes from {origin[key]}; kept that one"
                        )
                    else:
                        values[key] = value
                        origin[key] = source
            sample = TimelineSample(
                t=wall,
                elapsed_s=began - self._started_at,
                phase=phase,
                idle=idle,
                values=values,
                errors=tuple(errors),
            )
            line = json.dumps(sample.to_json(), allow_nan=False, separators=(",", ":"))
            self._file.write(line + "\n")
            self._file.flush()
            self._samples.append(sample)
            return sample

    async def run(
        self, interval_s: float, stop_event: asyncio.Event, *, max_duration_s: float = 86_400.0
    ) -> int:
        """Sample every ``interval_s`` (phase :attr:`phase`, not idle) until told to stop.

        The first sample is taken at once. Ticks stay on a fixed grid; a sample
        that overruns skips the ticks it missed rather than bursting to catch up.

        Args:
            interval_s: seconds between samples, > 0.
            stop_event: set it to stop; the loop returns promptly.
            max_duration_s: the loop stops by itself after this long.

        Returns:
            How many samples the loop took.

        Raises:
            UsageError: ``interval_s`` or ``max_duration_s`` is not positive.
        """
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise UsageError(f"interval_s must be a positive number of seconds, not {interval_s!r}")
        if not max_duration_s > 0:
            raise UsageError(f"max_duration_s must be positive, not {max_duration_s!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_duration_s
        next_at = loop.time()
        taken = 0
        while not stop_event.is_set():
            now = loop.time()
            if now >= deadline:
                break
            if now < next_at:
                try:
                    async with asyncio.timeout(min(next_at, deadline) - now):
                        await stop_event.wait()
                except TimeoutError:
                    continue
                break
            await self.sample_now(self.phase, False)
            taken += 1
            next_at += interval_s
            behind = loop.time() - next_at
            if behind > 0:
                next_at += math.ceil(behind / interval_s) * interval_s
        return taken

    def _sources_names(self) -> list[str]:
        return [name for name, _ in self._sources]

    async def _read(self, name: str, source: Source) -> Mapping[str, float] | str:
        """The source's values, or one error line saying why there are none."""
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                found = await source()
        except Exception as exc:  # recorded in the timeline, never stops the sampler
            if isinstance(exc, TimeoutError) and deadline.expired():
                return f"{name}: no answer within {self._timeout_s:g}s"
            return f"{name}: {type(exc).__name__}: {exc}"
        if not isinstance(found, Mapping):
            return f"{name}: returned {type(found).__name__}, not a mapping of numbers"
        return found
