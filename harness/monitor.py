"""Watches the target's memory and gauges through the whole run, into ``timeline.jsonl``.

The sampler runs on its own event loop in a background thread, so it keeps
its timer while scenarios start and stop their own loops. Scenarios ask it for
*idle-point* samples between cycles (:meth:`Monitor.sample`), which is what the
``memory_growth`` decision fits; the timer's samples draw the chart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.probes.json_endpoint import read_json_numbers
from harness.probes.metrics import scrape_prometheus
from harness.probes.process import ProcessProbe
from harness.probes.sampler import TIMELINE_NAME, Sampler, Source, TimelineSample
from harness.transport.http import AiohttpClient

MEMORY = "memory_bytes"
SESSIONS = "sessions"


@dataclass(frozen=True, slots=True)
class ProbePlan:
    """What to sample and where (built from the settings).

    Attributes:
        source: ``psutil`` (``pid``), ``prometheus`` (``metrics_url``),
            ``json`` (``json_url`` and ``json_path``) or ``none``.
        memory_metric: the Prometheus metric holding memory.
        gauges: gauges to scrape from ``metrics_url`` (empty: none).
    """

    source: str
    pid: int | None = None
    metrics_url: str | None = None
    memory_metric: str = "process_resident_memory_bytes"
    gauges: tuple[str, ...] = ()
    json_url: str | None = None
    json_path: str | None = None
    #: ``(name, dotted path)`` gauges read from ``json_url`` with the memory.
    json_gauges: tuple[tuple[str, str], ...] = ()


class Monitor:
    """Background sampling of the target plus the harness's own counters.

    Args:
        plan: what to sample.
        report_dir: ``timeline.jsonl`` is written there.
        started_at: the run's ``time.monotonic()`` origin (shared with records).
        counters: the harness's counts now (``sessions``, ``messages`` …).
        interval_s: seconds between timer samples.
    """

    def __init__(
        self,
        plan: ProbePlan,
        *,
        report_dir: Path,
        started_at: float,
        counters: Callable[[], Mapping[str, float]],
        interval_s: float,
    ) -> None:
        self.plan = plan
        self._dir = report_dir
        self._origin = started_at
        self._counters = counters
        self._interval = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._sampler: Sampler | None = None
        self._http: AiohttpClient | None = None

    @property
    def samples(self) -> list[TimelineSample]:
        return self._sampler.samples if self._sampler is not None else []

    def start(self) -> None:
        """Start the sampling thread (the first sample is taken at once)."""
        self._thread = threading.Thread(target=self._main, name="isoharness-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._http = AiohttpClient(limit=4)
        self._sampler = Sampler(self._sources(), self._dir / TIMELINE_NAME, started_at=self._origin)
        self._ready.set()
        try:
            await self._sampler.run(self._interval, self._stop)
        finally:
            await self._http.aclose()

    async def _fetch(self, url: str) -> tuple[int, str]:
        assert self._http is not None
        resp = await self._http.request("GET", url, timeout_s=5.0)
        return resp.status, resp.text

    def _sources(self) -> list[tuple[str, Source]]:
        plan = self.plan
        sources: list[tuple[str, Source]] = [("harness", self._harness_source)]
        if plan.source == "psutil" and plan.pid is not None:
            probe = ProcessProbe(plan.pid)

            async def process() -> dict[str, float]:
                values = probe.read()
                return {MEMORY: values.pop("process_rss_bytes"), **values}

            sources.append(("process", process))
        names = list(plan.gauges)
        if plan.source == "prometheus":
            names.append(plan.memory_metric)
        if plan.metrics_url and names:
            url = plan.metrics_url

            async def metrics() -> dict[str, float]:
                values = await scrape_prometheus(self._fetch, url, names)
                if plan.source == "prometheus":
                    values[MEMORY] = values.pop(plan.memory_metric)
                return values

            sources.append(("metrics", metrics))
        if plan.source == "json" and plan.json_url and plan.json_path:
            json_url = plan.json_url
            paths = {MEMORY: plan.json_path, **dict(plan.json_gauges)}

            async def json_memory() -> dict[str, float]:
                return await read_json_numbers(self._fetch, json_url, paths)

            sources.append(("json", json_memory))
        return sources

    async def _harness_source(self) -> dict[str, float]:
        return {key: float(value) for key, value in self._counters().items()}

    def sample(self, phase: str, *, idle: bool) -> TimelineSample | None:
        """Take one sample now (an idle point between cycles); blocks until done."""
        if self._loop is None or self._sampler is None:
            return None
        future = asyncio.run_coroutine_threadsafe(self._sampler.sample_now(phase, idle), self._loop)
        try:
            return future.result(timeout=15)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return None

    def set_phase(self, phase: str) -> None:
        if self._sampler is not None:
            self._sampler.phase = phase

    def stop(self) -> None:
        """Stop the timer, close the timeline (idempotent)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._sampler is not None:
            self._sampler.close()


def gauge_idle_values(samples: Sequence[TimelineSample], gauges: Sequence[str]) -> dict[str, float]:
    """Each gauge's idle value: its first reading (taken before any user connected)."""
    idle: dict[str, float] = {}
    for sample in samples:
        for gauge in gauges:
            if gauge not in idle and gauge in sample.values:
                idle[gauge] = sample.values[gauge]
    return idle
