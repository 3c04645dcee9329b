"""Capacity bench: how much memory the reference service spends per idle WebSocket.

Starts the reference service with ``EmbeddedService`` on a free loopback port,
opens ``--connections`` concurrent ``/ws`` connections from this process (each
its own user, authenticated in the handshake header), holds them idle, then
reads the service's resident memory (psutil, by pid) and its
``aep_connections_active`` gauge, prints the figures, closes everything and
checks that the gauge returns to 0.

Usage::

    .venv/bin/python bench/capacity_idle_ws.py [--connections 5000] [--concurrency 200]
        [--hold 3]

Exit status: 0 when every connection was held and the gauges agreed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import urllib.request

import jwt
import psutil
from websockets.asyncio.client import ClientConnection, connect

from harness.embedded import EmbeddedService

SECRET = "capacity-bench-secret-of-at-least-32-bytes"
TENANTS = 50


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def gauge(base: str, name: str) -> float:
    """One unlabelled metric from the service's ``/metrics``."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:  # loopback only
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} missing from {base}/metrics")


async def wait_gauge(base: str, name: str, value: float, wait_s: float) -> float:
    """Poll a gauge until it equals ``value`` or ``wait_s`` passes; return the last reading."""
    end = time.monotonic() + wait_s
    current = await asyncio.to_thread(gauge, base, name)
    while current != value and time.monotonic() < end:
        await asyncio.sleep(0.1)
        current = await asyncio.to_thread(gauge, base, name)
    return current


def token(index: int) -> str:
    """A token for the ``index``-th bench user."""
    claims = {
        "sub": f"user{index}",
        "tenant": f"tenant{index % TENANTS}",
        "exp": time.time() + 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def open_all(base: str, count: int, concurrency: int) -> tuple[list[ClientConnection], int]:
    """Open ``count`` connections, at most ``concurrency`` handshakes at a time.

    Returns the open connections and the number of failed handshakes.
    """
    url = base.replace("http://", "ws://", 1) + "/ws"
    tokens = [token(i) for i in range(count)]
    gate = asyncio.Semaphore(concurrency)
    conns: list[ClientConnection] = []
    failures = 0

    async def one(index: int) -> None:
        nonlocal failures
        async with gate:
            try:
                conns.append(
                    await connect(
                        url,
                        additional_headers={"Authorization": f"Bearer {tokens[index]}"},
                        proxy=None,
                        compression=None,
                        ping_interval=None,
                        open_timeout=30,
                        close_timeout=5,
                        max_queue=4,
                    )
                )
            except Exception as exc:  # report it, do not abort the bench
                failures += 1
                if failures <= 3:
                    print(f"handshake {index} failed: {exc!r}", file=sys.stderr)

    await asyncio.gather(*(one(i) for i in range(count)))
    return conns, failures


async def bench(connections: int, concurrency: int, hold_s: float) -> int:
    """Run the bench; return the exit status."""
    fd_limit = raise_fd_limit()
    if fd_limit < connections + 100:
        print(f"RLIMIT_NOFILE is {fd_limit}; need {connections + 100}", file=sys.stderr)
        return 1
    with EmbeddedService(jwt_secret=SECRET) as service:
        base = service.url
        proc = psutil.Process(service.pid)
        await asyncio.sleep(0.5)
        rss_idle = proc.memory_info().rss

        started = time.monotonic()
        conns, failures = await open_all(base, connections, concurrency)
        elapsed = time.monotonic() - started
        active = await wait_gauge(base, "aep_connections_active", len(conns), 10)
        await asyncio.sleep(hold_s)
        rss_held = proc.memory_info().rss
        metric_rss = await asyncio.to_thread(gauge, base, "process_resident_memory_bytes")
        held = sum(1 for c in conns if c.close_code is None)

        print(f"connections requested     {connections}")
        print(f"connections held          {held}  (failed handshakes: {failures})")
        print(f"aep_connections_active    {active:.0f}")
        print(f"handshake rate            {len(conns) / elapsed:,.0f} /s  ({elapsed:.2f} s total)")
        print(f"service RSS idle          {rss_idle / 2**20:,.1f} MiB")
        print(
            f"service RSS holding       {rss_held / 2**20:,.1f} MiB  (/metrics: "
            f"{metric_rss / 2**20:,.1f} MiB)"
        )
        if held:
            per_conn = (rss_held - rss_idle) / held
            print(f"RSS per connection        {per_conn / 1024:,.1f} KiB")

        closing = time.monotonic()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        after = await wait_gauge(base, "aep_connections_active", 0, 15)
        print(
            f"closed all in             {time.monotonic() - closing:.2f} s; "
            f"aep_connections_active now {after:.0f}"
        )
        rss_after = proc.memory_info().rss
        print(f"service RSS after close   {rss_after / 2**20:,.1f} MiB")
    ok = held == connections and active == connections and after == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to hold before measuring")
    args = parser.parse_args(argv)
    return asyncio.run(bench(args.connections, args.concurrency, args.hold))


if __name__ == "__main__":
    sys.exit(main())
