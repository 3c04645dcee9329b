"""Probes over real sockets and processes: Prometheus text, JSON endpoints, psutil, the sampler.

The servers are tiny aiohttp apps on 127.0.0.1 port 0; the probes get an
aiohttp-based ``fetch`` from here, as the harness wires its own client later.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from harness.errors import ProtocolMismatch, TargetError, TargetUnreachable, UsageError
from harness.probes.json_endpoint import (
    extract_number,
    json_source,
    read_json_number,
    read_json_numbers,
)
from harness.probes.metrics import Fetch, prometheus_source, public_url, scrape_prometheus
from harness.probes.process import ProcessProbe
from harness.probes.sampler import Sampler, TimelineSample

#: Scales every time limit (slow CI: ISOHARNESS_TEST_TIME_FACTOR=3).
TIME_FACTOR = float(os.environ.get("ISOHARNESS_TEST_TIME_FACTOR", "1"))

Routes = dict[str, tuple[int, str]]
T = TypeVar("T")


@asynccontextmanager
async def serving(routes: Routes) -> AsyncIterator[tuple[str, Fetch]]:
    """Serve ``path → (status, body)`` on loopback; yield the base URL and a fetch."""

    async def handler(request: web.Request) -> web.Response:
        status, body = routes[request.path]
        return web.Response(status=status, text=body)

    app = web.Application()
    for path in routes:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        timeout = aiohttp.ClientTimeout(total=5 * TIME_FACTOR)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def fetch(url: str) -> tuple[int, str]:
                async with session.get(url) as response:
                    return response.status, await response.text()

            yield f"http://127.0.0.1:{port}", fetch
    finally:
        await runner.cleanup()


def exposition() -> str:
    registry = CollectorRegistry()
    sessions = Counter("sessions", "Sessions served.", ["tenant"], registry=registry)
    sessions.labels("a").inc(3)
    sessions.labels("b").inc(4)
    Gauge("open_connections", "Open connections.", registry=registry).set(5)
    Counter("errors", "Errors, none yet.", ["kind"], registry=registry)
    return generate_latest(registry).decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


# --- Prometheus -------------------------------------------------------------------------


def test_scrape_sums_a_counter_across_labels_under_either_name():
    async def main() -> dict[str, float]:
        async with serving({"/metrics": (200, exposition())}) as (base, fetch):
            return await scrape_prometheus(
                fetch, f"{base}/metrics", ["sessions", "sessions_total", "open_connections"]
            )

    assert run(main) == {"sessions": 7.0, "sessions_total": 7.0, "open_connections": 5.0}


def test_scrape_reads_a_declared_counter_without_samples_as_zero():
    async def main() -> dict[str, float]:
        async with serving({"/metrics": (200, exposition())}) as (base, fetch):
            return await scrape_prometheus(fetch, f"{base}/metrics", ["errors", "errors_total"])

    assert run(main) == {"errors": 0.0, "errors_total": 0.0}


def test_scrape_of_a_missing_metric_names_it_and_what_is_there():
    async def main() -> None:
        async with serving({"/metrics": (200, exposition())}) as (base, fetch):
            with pytest.raises(ProtocolMismatch) as caught:
                await scrape_prometheus(fetch, f"{base}/metrics", ["sessions", "goroutines"])
            assert str(caught.value) == (
                f"target {base}/metrics is unusable: no metric 'goroutines' in the exposition "
                "(metric families seen: errors, open_connections, sessions, sessions_created)"
            )

    run(main)


def test_scrape_of_an_error_status_is_a_protocol_mismatch():
    async def main() -> None:
        async with serving({"/metrics": (500, "boom")}) as (base, fetch):
            with pytest.raises(ProtocolMismatch) as caught:
                await scrape_prometheus(fetch, f"{base}/metrics", ["sessions"])
            assert str(caught.value) == (
                f"target {base}/metrics is unusable: GET answered HTTP 500, expected 200"
            )

    run(main)


def test_scrape_of_html_is_a_protocol_mismatch():
    async def main() -> None:
        async with serving({"/metrics": (200, "<html>login</html>")}) as (base, fetch):
            with pytest.raises(ProtocolMismatch) as caught:
                await scrape_prometheus(fetch, f"{base}/metrics", ["sessions"])
            assert str(caught.value) == (
                f"target {base}/metrics is unusable: not Prometheus text exposition: "
                "invalid metric name:<html>login</html> (body '<html>login</html>')"
            )

    run(main)


def test_scrape_of_a_closed_port_is_target_unreachable():
    async def main() -> None:
        async with serving({}) as (_, fetch):
            url = f"http://127.0.0.1:{closed_port()}/metrics"
            with pytest.raises(TargetUnreachable) as caught:
                await scrape_prometheus(fetch, url, ["sessions"])
            assert caught.value.target == url
            assert caught.value.reason.startswith("GET failed: ClientConnectorError: ")

    run(main)


def test_messages_never_carry_credentials():
    assert public_url("http://ops:s3cret@127.0.0.1:9090/metrics") == "http://127.0.0.1:9090/metrics"
    assert public_url("http://127.0.0.1:9090/metrics") == "http://127.0.0.1:9090/metrics"


# --- JSON endpoints ---------------------------------------------------------------------

VARZ = json.dumps(
    {
        "server_id": "NATS1",
        "mem": 25_165_824,
        "connections": 4,
        "routes": [{"pending": {"size": 7}}],
        "version": "2.10.7",
        "leaf": None,
    }
)


def test_read_json_number_follows_a_dotted_path():
    async def main() -> tuple[float, float]:
        async with serving({"/varz": (200, VARZ)}) as (base, fetch):
            mem = await read_json_number(fetch, f"{base}/varz", "mem")
            size = await read_json_number(fetch, f"{base}/varz", "routes.0.pending.size")
            return mem, size

    assert run(main) == (25_165_824.0, 7.0)


def test_read_json_numbers_reads_several_values_from_one_fetch():
    async def main() -> dict[str, float]:
        async with serving({"/varz": (200, VARZ)}) as (base, fetch):
            source = json_source(
                fetch, f"{base}/varz", {"nats_mem_bytes": "mem", "nats_connections": "connections"}
            )
            return await source()

    assert run(main) == {"nats_mem_bytes": 25_165_824.0, "nats_connections": 4.0}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (
            "memory",
            "JSON path 'memory': no key 'memory' at the top level (keys: 'connections', "
            "'leaf', 'mem', 'routes', 'server_id', 'version')",
        ),
        ("version", "JSON path 'version' is a string ('2.10.7'), not a number"),
        ("leaf", "JSON path 'leaf' is null, not a number"),
        (
            "routes.3.pending",
            "JSON path 'routes.3.pending': '3' is not an index of the 1-element list at 'routes'",
        ),
        ("mem.total", "JSON path 'mem.total': 'mem' is 25165824, not an object or list"),
        ("routes.0.pending", "JSON path 'routes.0.pending' is an object, not a number"),
    ],
)
def test_a_path_that_leads_to_no_number_says_where_and_what_it_found(path, reason):
    async def main() -> None:
        async with serving({"/varz": (200, VARZ)}) as (base, fetch):
            with pytest.raises(ProtocolMismatch) as caught:
                await read_json_number(fetch, f"{base}/varz", path)
            assert caught.value.target == f"{base}/varz"
            assert caught.value.reason == reason

    run(main)


def test_a_body_that_is_not_json_is_a_protocol_mismatch():
    async def main() -> None:
        async with serving({"/varz": (200, "mem: 12")}) as (base, fetch):
            with pytest.raises(ProtocolMismatch) as caught:
                await read_json_numbers(fetch, f"{base}/varz", {"m": "mem"})
            assert caught.value.reason == (
                "not JSON: Expecting value: line 1 column 1 (char 0) (body 'mem: 12')"
            )

    run(main)


def test_booleans_and_nan_are_not_numbers():
    with pytest.raises(ProtocolMismatch, match="is a boolean \\(true\\), not a number"):
        extract_number({"up": True}, "up", target="t")
    with pytest.raises(ProtocolMismatch, match="is nan, not a number"):
        extract_number(json.loads('{"m": NaN}'), "m", target="t")


def test_a_malformed_path_is_a_usage_error():
    with pytest.raises(UsageError) as caught:
        extract_number({"a": 1}, "a..b", target="t")
    assert str(caught.value) == "invalid JSON path 'a..b': use dotted keys like 'mem' or 'a.b.0.c'"


# --- processes --------------------------------------------------------------------------


def test_process_probe_reads_this_process():
    probe = ProcessProbe(os.getpid())

    rss = probe.rss_bytes()
    assert rss > 1024 * 1024
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    readings = asyncio.run(probe())
    assert set(readings) == {"process_rss_bytes", "process_threads", "process_open_fds"}
    assert readings["process_threads"] >= 1
    assert readings["process_open_fds"] >= 3


def test_a_process_that_exits_is_target_unreachable():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        probe = ProcessProbe(child.pid)
        assert probe.rss_bytes() > 0
    finally:
        child.kill()
        child.wait(timeout=10 * TIME_FACTOR)

    with pytest.raises(TargetUnreachable) as caught:
        probe.rss_bytes()
    assert (
        str(caught.value) == f"target pid {child.pid} is unusable: process {child.pid} has exited"
    )
    with pytest.raises(TargetUnreachable):
        probe.read()


def test_no_such_process_is_target_unreachable():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10 * TIME_FACTOR)

    with pytest.raises(TargetError) as caught:
        ProcessProbe(child.pid)
    assert isinstance(caught.value, TargetUnreachable)
    assert caught.value.reason == f"no process with pid {child.pid}"


# --- the sampler ------------------------------------------------------------------------


def read_timeline(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_now_writes_one_flushed_json_line(tmp_path):
    path = tmp_path / "out" / "timeline.jsonl"

    async def fixed() -> dict[str, float]:
        return {"rss": 100.0, "fds": 7}

    async def main() -> TimelineSample:
        with Sampler([("proc", fixed)], path) as sampler:
            sample = await sampler.sample_now("cycle 1", True, extra={"sessions": 50})
            # Flushed: readable before close.
            assert read_timeline(path) == [sample.to_json()]
            return sample

    sample = asyncio.run(main())
    (row,) = read_timeline(path)
    assert set(row) == {"t", "elapsed_s", "phase", "idle", "values", "errors"}
    assert row["phase"] == "cycle 1"
    assert row["idle"] is True
    assert row["values"] == {"sessions": 50, "rss": 100.0, "fds": 7}
    assert row["errors"] == []
    assert isinstance(row["t"], float)
    assert row["t"] > 1e9
    assert 0 <= sample.elapsed_s < 5


def test_a_failing_source_is_recorded_and_never_stops_the_sampler(tmp_path):
    calls = {"n": 0}

    async def flaky() -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ProtocolMismatch("http://t/metrics", "GET answered HTTP 503, expected 200")
        return {"rss": 1.0}

    async def hangs() -> dict[str, float]:
        await asyncio.sleep(60)
        return {}

    async def odd() -> dict[str, float]:
        return {"nan": math.nan, "text": "12", "rss": 2.0}  # type: ignore[dict-item]

    async def main() -> list[TimelineSample]:
        sources = {"prom": flaky, "slow": hangs, "odd": odd}
        with Sampler(sources, tmp_path / "timeline.jsonl", source_timeout_s=0.05) as sampler:
            await sampler.sample_now("cycle 1", False)
            await sampler.sample_now("cycle 2", False)
            return sampler.samples

    first, second = asyncio.run(main())
    assert first.values == {"rss": 2.0}
    assert first.errors == (
        "prom: ProtocolMismatch: target http://t/metrics is unusable: "
        "GET answered HTTP 503, expected 200",
        "slow: no answer within 0.05s",
        "odd: value 'nan' is nan, not finite",
        "odd: value 'text' is '12', not a number",
    )
    assert second.values == {"rss": 1.0}
    assert "odd: value 'rss' also comes from prom; kept that one" in second.errors
    assert [row["errors"] for row in read_timeline(tmp_path / "timeline.jsonl")] == [
        list(first.errors),
        list(second.errors),
    ]


def test_run_samples_on_an_interval_until_told_to_stop(tmp_path):
    async def tick() -> dict[str, float]:
        return {"x": 1.0}

    async def main() -> tuple[int, float, list[TimelineSample]]:
        stop = asyncio.Event()
        with Sampler({"tick": tick}, tmp_path / "timeline.jsonl") as sampler:
            sampler.phase = "soak"
            began = time.monotonic()
            loop = asyncio.create_task(sampler.run(0.02, stop))
            await asyncio.sleep(0.2)
            idle = await sampler.sample_now("between cycles", True)
            await asyncio.sleep(0.1)
            stop.set()
            taken = await asyncio.wait_for(loop, timeout=5 * TIME_FACTOR)
            assert idle in sampler.samples
            return taken, time.monotonic() - began, sampler.samples

    taken, duration, samples = asyncio.run(main())
    # One sample at once, then one per tick of a fixed grid: never a burst.
    assert 3 <= taken <= math.floor(duration / 0.02) + 1
    assert len(samples) == taken + 1
    assert {s.phase for s in samples if not s.idle} == {"soak"}
    assert [s.idle for s in samples].count(True) == 1
    elapsed = [s.elapsed_s for s in samples]
    assert elapsed == sorted(elapsed)
    assert len(read_timeline(tmp_path / "timeline.jsonl")) == len(samples)


def test_run_stops_by_itself_after_its_maximum_duration(tmp_path):
    async def tick() -> dict[str, float]:
        return {"x": 1.0}

    async def main() -> int:
        with Sampler({"tick": tick}, tmp_path / "timeline.jsonl") as sampler:
            return await asyncio.wait_for(
                sampler.run(0.05, asyncio.Event(), max_duration_s=0.12), timeout=5 * TIME_FACTOR
            )

    assert 1 <= asyncio.run(main()) <= 3  # ticks at 0, 0.05 and 0.10 s


def test_memory_keeps_the_last_samples_and_the_file_keeps_all(tmp_path):
    async def tick() -> dict[str, float]:
        return {"x": 1.0}

    async def main() -> list[TimelineSample]:
        with Sampler({"tick": tick}, tmp_path / "timeline.jsonl", max_samples=3) as sampler:
            for i in range(5):
                await sampler.sample_now(f"cycle {i}", True)
            return sampler.samples

    samples = asyncio.run(main())
    assert [s.phase for s in samples] == ["cycle 2", "cycle 3", "cycle 4"]
    assert len(read_timeline(tmp_path / "timeline.jsonl")) == 5


def test_misuse_is_refused(tmp_path):
    async def tick() -> dict[str, float]:
        return {}

    with pytest.raises(UsageError, match="source names must be unique"):
        Sampler([("a", tick), ("a", tick)], tmp_path / "t.jsonl")
    sampler = Sampler({"a": tick}, tmp_path / "t.jsonl")
    with pytest.raises(UsageError) as caught:
        asyncio.run(sampler.run(0, asyncio.Event()))
    assert str(caught.value) == "interval_s must be a positive number of seconds, not 0"
    sampler.close()
    with pytest.raises(UsageError) as caught:
        asyncio.run(sampler.sample_now("late", True))
    assert str(caught.value) == "the sampler is closed; sample before calling close()"


def test_the_sampler_drives_real_probes(tmp_path):
    async def main() -> TimelineSample:
        async with serving({"/metrics": (200, exposition()), "/varz": (200, VARZ)}) as (
            base,
            fetch,
        ):
            sources = [
                ("process", ProcessProbe(os.getpid())),
                ("prom", prometheus_source(fetch, f"{base}/metrics", ["open_connections"])),
                ("varz", json_source(fetch, f"{base}/varz", {"nats_mem_bytes": "mem"})),
            ]
            with Sampler(sources, tmp_path / "timeline.jsonl") as sampler:
                return await sampler.sample_now("idle", True, extra={"sessions": 0})

    sample = asyncio.run(main())
    assert sample.errors == ()
    assert sample.values["open_connections"] == 5.0
    assert sample.values["nats_mem_bytes"] == 25_165_824.0
    assert sample.values["process_rss_bytes"] > 0


def test_probes_never_import_an_http_client():
    code = (
        "import sys\n"
        "import harness.probes.metrics, harness.probes.json_endpoint\n"
        "import harness.probes.process, harness.probes.sampler\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'websockets', 'httpx', 'requests', 'nats'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
