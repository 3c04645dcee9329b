"""Every fault mode of the reference service against a full `isoharness run`.

For each fault (and the clean and noisy services) this starts
``isoharness serve --fault F`` on loopback, runs ``isoharness run --target-url``
against it, and prints the exit code, the verdict, the violation kinds and the
wall time. Usage::

    .venv/bin/python bench/fault_matrix.py [FAULT ...]
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

FAULTS = [
    "clean",
    "noisy",
    "singleton_emitter",
    "state_key_missing_user",
    "thread_key_missing_user",
    "path_cache",
    "reconnect_registry",
    "dirty_pipe",
    "tenant_broadcast",
    "lost_event",
    "duplicate_event",
    "out_of_order",
    "gauge_stuck",
    "error_echo",
    "message_id_cache",
    "undo_buffer",
    "preview_leak",
]


def run_one(fault: str, workdir: Path) -> str:
    secret = secrets.token_urlsafe(32)
    faults = [] if fault == "clean" else [fault]
    with EmbeddedService(jwt_secret=secret, faults=faults) as service:
        report = workdir / fault
        env = dict(os.environ, ISOHARNESS_JWT_SECRET=secret)
        argv = [sys.executable, "-m", "harness", "run", "--target-url", service.url]
        argv += ["--report-dir", str(report)]
        start = time.monotonic()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - start
    try:
        summary = json.loads((report / "summary.json").read_text())
    except (OSError, ValueError):
        return f"{fault:24} exit {done.returncode}  no summary: {done.stderr.strip()[-200:]}"
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary["violation_counts"].items()))
    return f"{fault:24} exit {done.returncode}  {took:5.1f}s  {summary['verdict']:12} {kinds}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "faults", nargs="*", metavar="FAULT", help=f"default: all of {', '.join(FAULTS)}"
    )
    unknown = [f for f in parser.parse_args().faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    chosen = parser.parse_args().faults or FAULTS
    with tempfile.TemporaryDirectory(prefix="isoharness-faults-") as tmp:
        print(f"{'fault':24} exit  time   verdict      violations (kind count)")
        for fault in chosen:
            print(run_one(fault, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
