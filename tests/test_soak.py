"""The soak, end to end: it finds a per-session leak and stays quiet on a correct service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.embedded import EmbeddedService

SECRET = "soak-test-secret-of-at-least-32-bytes-long"


def soak(tmp_path: Path, faults: list[str], extra: list[str]) -> tuple[int, dict]:
    report = tmp_path / "report"
    with EmbeddedService(jwt_secret=SECRET, faults=faults, extra_args=extra) as service:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness",
                "soak",
                "--duration",
                "30",
                "--seed",
                "7",
                "--target-url",
                service.url,
                "--report-dir",
                str(report),
                "-q",
            ][:-1],
            capture_output=True,
            text=True,
            timeout=240,
            env=dict(os.environ, ISOHARNESS_JWT_SECRET=SECRET),
        )
    summary = json.loads((report / "summary.json").read_text())
    return done.returncode, summary


def test_a_soak_finds_a_per_session_leak_and_sizes_it(tmp_path):
    code, summary = soak(tmp_path, ["session_leak"], ["--leak-kb", "256"])
    assert code == 1
    assert summary["violation_counts"] == {"memory_growth": 1}
    memory = summary["memory"]
    assert memory["significant"] is True
    # 256 KiB kept per WebSocket session; the service's own bounded stores add a little.
    assert 230 * 1024 < memory["slope_bytes_per_session"] < 300 * 1024
    [violation] = summary["violations"]
    assert violation["scenario"].endswith("test_soak_keeps_users_apart_and_memory_flat")
    timeline = (tmp_path / "report" / "timeline.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["idle"] for line in timeline) >= 10


def test_a_soak_of_a_correct_service_raises_no_alarm(tmp_path):
    code, summary = soak(tmp_path, [], [])
    assert code == 0, summary["violations"][:3]
    assert summary["verdict"] == "pass"
    assert summary["memory"]["significant"] is False
    assert summary["counts"]["connections"] > 200
