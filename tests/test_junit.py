"""junit.xml: one test case per scenario instance, violations as failures with their witness."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from harness.embedded import EmbeddedService

SECRET = "junit-test-secret-of-at-least-32-bytes-long"


def test_violations_are_junit_failures_carrying_the_witness(tmp_path):
    report = tmp_path / "report"
    with EmbeddedService(jwt_secret=SECRET, faults=["singleton_emitter"]) as service:
        done = subprocess.run(
            [sys.executable, "-m", "harness", "run", "--target-url", service.url,
             "--report-dir", str(report), "--seed", "11", "--", "-k", "concurrent_users"],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, ISOHARNESS_JWT_SECRET=SECRET),
        )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    cases = ET.parse(report / "junit.xml").getroot().iter("testcase")
    failures = {case.get("name"): case.find("failure") for case in cases}
    assert set(failures) == {
        "test_users_sending_at_once_receive_only_their_own_events[1]",
        "test_users_sending_at_once_receive_only_their_own_events[4]",
    }
    for failure in failures.values():
        assert failure is not None
        text = (failure.get("message") or "") + (failure.text or "")
        assert "cross_delivery" in text
        assert "witness: {" in text  # the raw frame that leaked
        assert "seed 11" in text
        assert SECRET not in text
