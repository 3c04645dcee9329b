"""The floor under bench/compare.py: the fast transport alone, recording and checking nothing.

The same workload and target as ``compare.py`` (100 users by default, closed
loop, the five-event lifecycle from the fast target), driven by
:class:`~harness.transport.fast.FastConnector` with a minimal callback per
read: ``bare`` looks for ``"agent_completed"`` in the text, ``decode`` parses
every frame with orjson first. What the harness spends above this figure is
its recording and checking. CPU is this process's user+system time between
the first message and the last completion.

Usage::

    .venv/bin/python bench/transport_floor.py [--users 100] [--messages 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (the target and its tokens)

from harness.transport.fast import FastChannel, FastConnector  # noqa: E402


async def drive(url: str, users: int, messages: int, decode: bool) -> tuple[float, int]:
    """Run the closed loop once; return (CPU seconds, events received)."""
    connector = FastConnector()
    opened = await asyncio.gather(
        *(connector.connect(url, token=compare.token_for(i)) for i in range(users))
    )
    channels = [channel for channel in opened if isinstance(channel, FastChannel)]
    done = asyncio.get_running_loop().create_future()
    left = len(channels)
    received = 0

    def user(channel: FastChannel, index: int) -> Callable[[], None]:
        sent = 0
        marker = f"isofloor{index:011d}"

        def send() -> None:
            nonlocal sent, left
            if sent == messages:
                left -= 1
                if left == 0:
                    done.set_result(None)
                return
            sent += 1
            message = {
                "type": "user_message",
                "message_id": f"{marker}-m{sent}",
                "thread_id": f"t{sent}-{marker}",
                "content": f"{marker} note {sent}",
            }
            channel.send_nowait(orjson.dumps(message).decode())

        def on_frames(frames: list[tuple[str, bool]]) -> None:
            nonlocal received
            received += len(frames)
            for text, _ in frames:
                if decode:
                    if orjson.loads(text).get("type") == "agent_completed":
                        send()
                elif '"agent_completed"' in text:
                    send()

        channel.deliver_to(on_frames)
        return send

    starters = [user(channel, index) for index, channel in enumerate(channels)]
    before = resource.getrusage(resource.RUSAGE_SELF)
    for start in starters:
        start()
    await done
    after = resource.getrusage(resource.RUSAGE_SELF)
    for channel in channels:
        await channel.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"bare": [], "decode": []}
    for _ in range(args.runs):
        for mode in results:
            target = subprocess.Popen(
                [sys.executable, str(HERE / "compare.py"), "--role", "target"],
                stdout=subprocess.PIPE,
                text=True,
                cwd=HERE.parent,
            )
            try:
                assert target.stdout is not None
                port = target.stdout.readline().split()[1]
                url = f"ws://127.0.0.1:{port}/ws"
                cpu, events = asyncio.run(drive(url, args.users, args.messages, mode == "decode"))
            finally:
                target.kill()
                target.wait()
                if target.stdout is not None:
                    target.stdout.close()
            per_100k = cpu / events * 1e5
            results[mode].append(per_100k)
            print(f"  {mode:6s} {per_100k:.2f} CPU-s/100k ({events} events)")
    for mode, figures in results.items():
        print(f"{mode:6s} median {statistics.median(figures):.2f} CPU-s per 100k events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
