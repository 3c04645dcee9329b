"""How fast does a soak find a memory leak, and how often does it cry wolf?

For each leak size, runs ``isoharness soak`` against ``isoharness serve --fault
session_leak --leak-kb K`` and replays the decision over the growing prefix of
the timeline's idle samples: the sessions and seconds after which the
``memory_growth`` verdict first became (and stayed) significant. Then runs
repeated soaks of the clean ``noisy`` mode (a cache that warms and plateaus,
out-of-order runs) and counts false ``memory_growth``/``resource_leak`` alarms.

    .venv/bin/python bench/soak_detection.py [--leaks 64:60,16:90,4:180]
        [--clean-runs 10] [--clean-duration 60]

(``K:S`` = leak KiB per session : soak seconds.)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.embedded import EmbeddedService
from harness.oracles.memory_growth import MemorySample, decide_memory_growth


def soak(faults: list[str], extra: list[str], duration: float, report: Path) -> dict[str, object]:
    secret = secrets.token_urlsafe(32)
    with EmbeddedService(jwt_secret=secret, faults=faults, extra_args=extra) as service:
        env = dict(os.environ, ISOHARNESS_JWT_SECRET=secret)
        argv = [sys.executable, "-m", "harness", "soak", "--duration", str(duration)]
        argv += ["--target-url", service.url, "--report-dir", str(report)]
        argv += ["--memory-source", "prometheus"]
        subprocess.run(argv, env=env, capture_output=True, timeout=duration * 3 + 120)
    result: dict[str, object] = json.loads((report / "summary.json").read_text())
    return result


def first_detection(report: Path) -> tuple[float, float] | None:
    """(sessions, seconds) from which the decision is significant on every longer prefix."""
    rows = [json.loads(line) for line in (report / "timeline.jsonl").read_text().splitlines()]
    idle = [
        MemorySample(r["elapsed_s"], r["values"]["sessions"], r["values"]["memory_bytes"], True)
        for r in rows
        if r["idle"] and "memory_bytes" in r["values"] and "sessions" in r["values"]
    ]
    last = {s.sessions: s for s in idle}
    samples = sorted(last.values(), key=lambda s: s.elapsed_s)
    found = None
    for n in range(8, len(samples) + 1):
        if decide_memory_growth(samples[:n]).significant:
            found = found or (samples[n - 1].sessions, samples[n - 1].elapsed_s)
        else:
            found = None
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leaks", default="64:60,16:90,4:180")
    parser.add_argument("--clean-runs", type=int, default=10)
    parser.add_argument("--clean-duration", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="isoharness-soak-") as tmp:
        print(
            "leak KiB/session  soak s  verdict  estimate                      first significant at"
        )
        for spec in args.leaks.split(","):
            kib, seconds = spec.split(":")
            report = Path(tmp) / f"leak{kib}"
            start = time.monotonic()
            summary = soak(["session_leak"], ["--leak-kb", kib], float(seconds), report)
            memory = summary.get("memory", {})
            assert isinstance(memory, dict)
            hit = first_detection(report)
            when = f"{hit[0]:,.0f} sessions, {hit[1]:.0f} s" if hit else "not within the soak"
            print(
                f"{kib:>16}  {seconds:>6}  {summary['verdict']:7}  "
                f"{memory.get('detail', '')[:60]:60}  {when}  "
                f"({time.monotonic() - start:.0f} s wall)",
                flush=True,
            )
        alarms = 0
        for i in range(args.clean_runs):
            report = Path(tmp) / f"noisy{i}"
            summary = soak(["noisy"], [], args.clean_duration, report)
            counts = summary.get("violation_counts", {})
            assert isinstance(counts, dict)
            alarm = bool(counts.get("memory_growth") or counts.get("resource_leak"))
            alarms += alarm
            memory = summary.get("memory", {})
            assert isinstance(memory, dict)
            print(
                f"noisy soak {i + 1}: {summary['verdict']:5} {memory.get('detail', '')}", flush=True
            )
        print(
            "false alarms (memory_growth or resource_leak): "
            f"{alarms} of {args.clean_runs} noisy soaks"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
