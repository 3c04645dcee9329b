"""End to end: ``python -m harness run`` against the reference service, faulty and correct.

Each planted bug of ``harness/reference/faults.py`` must be caught by the
narrowest shipped scenario that can show it, with a witness a person can act
on; a correct service (and a jittery but correct one) must pass every
scenario with every declared condition created; no report file may hold the
signing secret or a token; and SIGTERM must end a run with a final summary.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import (
    SECRET,
    SEED,
    SMALL,
    harness_env,
    leaks,
    output_of,
    read_summary,
    reference_service,
    run_harness,
    seconds,
    secret_needles,
)

from harness.cli import default_scenarios
from harness.run import evidence_json

#: Where findings judged after the last scenario (gauges, memory) are filed.
END_OF_RUN = "isoharness::end_of_run"
DELIVERY_AND_STATE = {"cross_delivery", "shared_state"}
LIFECYCLE = {"lost_event", "duplicate_event", "out_of_order"}
#: Errors a correct service and a correct harness never produce.
TARGET_OR_HARNESS_FAULTS = {
    "harness_error",
    "protocol_error",
    "target_rejected_frame",
    "http_5xx",
    "scenario_error",
    "target_unusable",
    "target_error",
    "gauge_unreadable",
    "bad_frame_unanswered",
}


@dataclass(frozen=True)
class Planted:
    """A fault, the scenario that shows it, and what the harness must report."""

    fault: str
    select: str  # pytest -k: one scenario instance
    kinds: frozenset[str]  # at least one of these must be reported
    crosses_tenant: bool | None = None  # when set, what every finding must say
    options: tuple[str, ...] = ()


PLANTED = [
    Planted("singleton_emitter", "test_users_sending_at_once and 4", frozenset({"cross_delivery"})),
    Planted(
        "state_key_missing_user",
        "test_users_writing_the_same_state_key and profile",
        frozenset({"shared_state"}),
    ),
    Planted(
        "thread_key_missing_user",
        "test_users_reusing_thread_ids",
        frozenset({"cross_delivery", "shared_state"}),
    ),
    Planted(
        "path_cache",
        "test_users_reading_the_same_path_at_once and profile",
        frozenset({"shared_state"}),
    ),
    Planted("reconnect_registry", "test_users_who_drop_mid_run", frozenset({"cross_delivery"})),
    Planted("dirty_pipe", "test_requests_abandoned_mid_flight", frozenset({"shared_state"})),
    # AEP/1 §4 holds inside a tenant too, and the witness must not overstate the leak.
    Planted(
        "tenant_broadcast",
        "test_tenants_with_the_same_user_ids and 2",
        frozenset({"cross_delivery"}),
        crosses_tenant=False,
    ),
    Planted("lost_event", "test_users_sending_at_once and 4", frozenset({"lost_event"})),
    Planted("duplicate_event", "test_users_sending_at_once and 4", frozenset({"duplicate_event"})),
    Planted("out_of_order", "test_users_sending_at_once and 4", frozenset({"out_of_order"})),
    # Found only on the paths the harness exercises on purpose: error frames of bad
    # frames, message ids several users share, deletes followed by reads.
    Planted("error_echo", "test_users_sending_at_once and 4", frozenset({"cross_delivery"})),
    Planted("message_id_cache", "test_users_reusing_message_ids", frozenset({"cross_delivery"})),
    # Another user's canary, upper-cased and cut to 40 characters (MAC lost).
    Planted("preview_leak", "test_users_sending_at_once and 4", frozenset({"cross_delivery"})),
    Planted(
        "undo_buffer",
        "test_sustained_mixed_load",
        frozenset({"shared_state"}),
        options=("--duration", "2"),
    ),
    # The gauge never comes back; a short grace keeps the run short.
    Planted(
        "gauge_stuck",
        "test_users_who_drop_mid_run",
        frozenset({"resource_leak"}),
        options=("--gauge-grace", "2"),
    ),
]


def assert_witness(violation: dict[str, Any]) -> None:
    """A violation carries what a person needs: who, whose, the raw bytes, the seed."""
    kind, evidence = violation["kind"], violation["evidence"]
    assert evidence["seed"] == SEED, violation
    if kind in DELIVERY_AND_STATE:
        assert violation["victim"], violation
        assert violation["owner"], violation
        assert violation["victim"] != violation["owner"], violation
        assert isinstance(violation["crosses_tenant"], bool), violation
        raw = evidence["raw"]
        assert raw, violation
        # The raw frame or body shows the leak: the owner's canary, or the owner's own tags.
        owner_sub = violation["owner"].split("/", 1)[1]
        shown = evidence["canary"] if "canary" in evidence else f'"user_id":"{owner_sub}"'
        assert shown in raw or "[truncated" in raw, violation
    elif kind in LIFECYCLE:
        assert violation["victim"], violation
        assert evidence["message_id"], violation
        assert evidence.get("raw") or evidence.get("last_raw") or evidence["received_types"] == []
    elif kind == "resource_leak":
        assert evidence["gauge"], violation
        assert evidence["last_value"] > evidence["idle_value"], violation


def assert_no_secrets(folder: Path, *outputs: str) -> None:
    needles = secret_needles(folder)
    assert leaks(folder, needles) == []
    for text in outputs:
        assert not [what for what, needle in needles.items() if needle.decode() in text]


@pytest.mark.parametrize("planted", PLANTED, ids=[p.fault for p in PLANTED])
def test_every_planted_bug_is_caught_with_a_witness(tmp_path: Path, planted: Planted) -> None:
    report = tmp_path / "report"
    with reference_service(planted.fault) as url:
        proc = run_harness(
            "run", "--target-url", url, "--report-dir", str(report), *SMALL,
            *planted.options, "--", "-k", planted.select, "-q",
            cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, output_of(proc)
    summary = read_summary(report)
    assert summary["verdict"] == "fail"
    assert summary["final"] is True
    assert summary["exit_code"] == 1
    assert summary["target"]["url"] == url
    scenarios = [s["id"] for s in summary["scenarios"] if s["id"] != END_OF_RUN]
    assert len(scenarios) == 1, f"the selection must be one scenario instance: {scenarios}"
    kinds = {v["kind"] for v in summary["violations"]}
    assert kinds & planted.kinds, summary["violation_counts"]
    for violation in summary["violations"]:
        assert_witness(violation)
    if planted.crosses_tenant is not None:
        crossing = {v["crosses_tenant"] for v in summary["violations"]} - {None}
        assert crossing == {planted.crosses_tenant}
    assert_no_secrets(report, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr


def _shipped_scenario_files() -> set[str]:
    return {
        path.name
        for path in default_scenarios().glob("test_*.py")
        if "pytest.mark.soak" not in path.read_text()
    }


def assert_clean_pass(proc: subprocess.CompletedProcess[str], report: Path) -> None:
    assert proc.returncode == 0, output_of(proc)
    summary = read_summary(report)
    assert summary["verdict"] == "pass"
    assert summary["final"] is True
    assert summary["violations"] == []
    # Errors the harness caused on purpose (network_faults cuts connections) are not faults.
    assert [e for e in summary["errors"] if e["kind"] in TARGET_OR_HARNESS_FAULTS] == []
    ran = {s["id"].split("::")[0] for s in summary["scenarios"]}
    assert ran == _shipped_scenario_files()
    for scenario in summary["scenarios"]:
        assert scenario["outcome"] == "passed", scenario
        assert scenario["conditions"], f"{scenario['id']} declares no conditions"
        created = {name: scenario["coverage"][name] for name in scenario["conditions"]}
        assert all(count > 0 for count in created.values()), (scenario["id"], created)
    assert "isoharness: PASS" in proc.stdout
    assert_no_secrets(report, proc.stdout, proc.stderr)


def test_the_default_run_passes_a_correct_service_every_time(tmp_path: Path) -> None:
    """``isoharness run`` with no target starts the reference service itself; twice, twice PASS."""
    for attempt in ("first", "second"):
        report = tmp_path / attempt
        proc = run_harness("run", "--report-dir", str(report), "--seed", str(SEED), cwd=tmp_path)
        assert_clean_pass(proc, report)
        assert read_summary(report)["target"]["embedded"] is True


def test_a_pass_says_how_rare_a_leak_it_rules_out(tmp_path: Path) -> None:
    """The evidence block counts every received event the run checked; the terminal and the
    page say what it rules out, and the last line keeps its format."""
    report = tmp_path / "report"
    proc = run_harness(
        "run", "--report-dir", str(report), *SMALL,
        "--", "-k", "test_users_sending_at_once and 4", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    summary = read_summary(report)
    checked = summary["counts"]["events_received"]
    assert checked > 0
    assert summary["evidence"] == evidence_json(checked, cross_deliveries=0)
    sentence = (
        f"{checked:,} events checked; a leak hitting more than 1 in "
        f"{summary['evidence']['one_in']:,} events would have shown (95%)"
    )
    lines = proc.stdout.splitlines()
    assert f"evidence: {sentence}" in lines
    assert re.fullmatch(r"isoharness: PASS — 0 violation\(s\) — report: \S+report\.html", lines[-1])
    assert sentence in (report / "report.html").read_text()


def test_a_jittery_but_correct_service_passes(tmp_path: Path) -> None:
    """``noisy``: runs finish out of order and memory plateaus; none of it is a violation."""
    report = tmp_path / "report"
    with reference_service("noisy") as url:
        # Every scenario, with the timed ones (churn, mixed load, storm) shortened.
        proc = run_harness(
            "run", "--target-url", url, "--report-dir", str(report), "--seed", str(SEED),
            "--duration", "2", cwd=tmp_path,
        )  # fmt: skip
    assert_clean_pass(proc, report)


def test_sigterm_ends_a_long_run_with_a_final_interrupted_summary(tmp_path: Path) -> None:
    report = tmp_path / "report"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    # The mixed load is session churn for the whole --duration (the churn scenario caps itself).
    argv = [sys.executable, "-m", "harness", "run", "--report-dir", str(report)]
    argv += ["--duration", "60", "--seed", str(SEED), "--", "-k", "test_sustained_mixed_load"]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=harness_env(ISOHARNESS_JWT_SECRET=SECRET),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            events = report / "events.jsonl"
            deadline = time.monotonic() + seconds(30)
            while not (
                (report / "summary.json").is_file() and events.is_file() and events.stat().st_size
            ):
                assert proc.poll() is None, "the run ended before it was interrupted"
                assert time.monotonic() < deadline, "the run never started recording"
                time.sleep(0.05)
            time.sleep(1)  # well into the scenario
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = proc.wait(timeout=seconds(5))
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = out.read_text() + err.read_text()
    assert code == 130, output
    assert took < seconds(5)
    summary = read_summary(report)
    assert summary["verdict"] == "interrupted"
    assert summary["final"] is True
    assert summary["exit_code"] == 130
    lines = events.read_bytes().splitlines()
    assert lines
    assert all(isinstance(orjson.loads(line), dict) for line in lines)
    assert "isoharness: INTERRUPTED" in output
    assert_no_secrets(report, output)
