"""Capacity bench: how many simulated users one harness process holds, and at what cost each.

Starts the fast AEP/1 target of ``bench/compare.py`` in its own process,
then, in this process, makes ``--users`` simulated users (faker identity,
token, canary, seeded random source) and ramps their connections open on
:class:`~harness.transport.fast.FastConnector` with at most ``--concurrency``
handshakes in flight, which runs at the machine's handshake rate (the
target's or ours, whichever is slower). Every connection is a real
:class:`~harness.users.UserConnection` recording into a
:class:`~harness.run.Run` (``events.jsonl`` in a temp dir, both streaming
oracles on). Once all are open it reads this process's RSS, has every user
send one message and wait for its five events (each connection is alive,
not just open), closes them all (timed: each close judges that connection's
runs), and checks the run.

Printed: the handshake rate, failed handshakes, the RSS before the users
were made and with every connection open, and the memory per user (that
difference over ``--users``), against the budget of ``--budget-kib``.

Usage::

    .venv/bin/python bench/capacity_users.py [--users 10000] [--concurrency 200]
        [--budget-kib 16] [--transport fast|websockets]

Exit status: 0 when every handshake succeeded, every run completed cleanly
and the memory per user is within the budget; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _harness_stubs import NoHttp  # noqa: E402
from compare import SECRET, TENANTS, raise_fd_limit  # noqa: E402

from harness import workloads  # noqa: E402
from harness.adapters.aep import AepAdapter  # noqa: E402
from harness.credentials import JwtCredentials  # noqa: E402
from harness.gcpolicy import fewer_collections  # noqa: E402
from harness.run import Run, Target  # noqa: E402
from harness.safety import Redactor  # noqa: E402
from harness.transport.base import Connector  # noqa: E402
from harness.transport.fast import FastConnector  # noqa: E402
from harness.transport.websocket import WebSocketConnector  # noqa: E402
from harness.types import ScenarioId  # noqa: E402
from harness.users import UserConnection, plan_users  # noqa: E402


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


async def bench(url: str, args: argparse.Namespace, report_dir: Path) -> dict[str, Any]:
    redactor = Redactor([SECRET])
    run = Run(
        target=Target(url, url),
        report_dir=report_dir,
        seed=1,
        run_key=os.urandom(32),
        run_id="20260101T000000Z-c4p4c1",
        redact=redactor.redact,
        needs_redaction=getattr(redactor, "needs_redaction", None),
    )
    connector: Connector = FastConnector() if args.transport == "fast" else WebSocketConnector()
    env = workloads.Env(
        run=run,
        scenario=ScenarioId("bench/capacity"),
        adapter=AepAdapter(connector, url),
        http=NoHttp(),  # type: ignore[arg-type]
        credentials=JwtCredentials(SECRET),
        base_url=url,
        ws_url=url,
        connect_limit=asyncio.Semaphore(args.concurrency),
    )
    # Faker's locales are loaded once, whatever the number of users: not per-user cost.
    await workloads.make_users(env, plan_users(count=16, tenants=4, run_tag="warm", namespace="w"))
    before = rss()
    keys = plan_users(count=args.users, tenants=TENANTS, run_tag=run.tag, namespace="c")
    users = await workloads.make_users(env, keys)
    began = time.monotonic()
    opened = await asyncio.gather(*(workloads.connect(env, user, attempts=1) for user in users))
    ramp_s = time.monotonic() - began
    conns: list[UserConnection] = [conn for conn in opened if conn is not None]
    failed = len(opened) - len(conns)
    await asyncio.sleep(0.5)
    held = rss()

    began = time.monotonic()
    runs = await asyncio.gather(*(workloads.send(env, conn, f"t-{conn.id}") for conn in conns))
    outcomes = await asyncio.gather(*(run_.done for run_ in runs if run_ is not None))
    chat_s = time.monotonic() - began
    peak = psutil.Process().memory_info().rss
    began = time.monotonic()
    await workloads.finish(env, conns)
    close_s = time.monotonic() - began
    run.finish_lifecycles()
    run.close()
    return {
        "users": args.users,
        "opened": len(conns),
        "failed": failed,
        "ramp_s": ramp_s,
        "rss_before": before,
        "rss_held": held,
        "rss_peak": peak,
        "completed": sum(1 for outcome in outcomes if outcome == "completed"),
        "chat_s": chat_s,
        "close_s": close_s,
        "events": run.counts["events_received"],
        "violations": dict(run.finding_counts),
        "errors": {f"{e['kind']}: {e['detail']}": e["count"] for e in run.errors.values()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--budget-kib", type=float, default=16.0)
    parser.add_argument("--transport", choices=["fast", "websockets"], default="fast")
    args = parser.parse_args()
    limit = raise_fd_limit()
    if limit < args.users + 100:
        print(f"the open-files limit is {limit}; {args.users} users need {args.users + 100}")
        return 1
    target = subprocess.Popen(
        [sys.executable, str(HERE / "compare.py"), "--role", "target"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert target.stdout is not None
        port = target.stdout.readline().split()[1]
        # As a scenario runs its users (Scenario's event loop runs in this block).
        with tempfile.TemporaryDirectory() as tmp, fewer_collections():
            result = asyncio.run(bench(f"ws://127.0.0.1:{port}/ws", args, Path(tmp)))
    finally:
        target.kill()
        target.wait()
        if target.stdout is not None:
            target.stdout.close()

    per_user = (result["rss_held"] - result["rss_before"]) / result["users"] / 1024
    rate = result["opened"] / result["ramp_s"] if result["ramp_s"] else 0.0
    print(
        f"transport {args.transport}: {result['opened']}/{result['users']} connections open "
        f"in {result['ramp_s']:.2f}s ({rate:.0f} handshakes/s, at most {args.concurrency} in "
        f"flight), {result['failed']} failed"
    )
    print(
        f"RSS {result['rss_before'] / 2**20:.1f} MiB before the users, "
        f"{result['rss_held'] / 2**20:.1f} MiB with every connection open "
        f"({per_user:.2f} KiB per user, budget {args.budget_kib:g} KiB), "
        f"{result['rss_peak'] / 2**20:.1f} MiB after one message each"
    )
    print(
        f"one message per user: {result['completed']} runs completed in {result['chat_s']:.2f}s, "
        f"{result['events']} events recorded and checked, violations {result['violations']}, "
        f"errors {result['errors']}"
    )
    print(
        f"closing every connection (each judged by the oracles, after a "
        f"{workloads.SETTLE_S:g}s settle pause): {result['close_s']:.2f}s"
    )
    ok = (
        result["failed"] == 0
        and result["completed"] == result["users"]
        and not result["violations"]
        and not result["errors"]
        and per_user <= args.budget_kib
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
