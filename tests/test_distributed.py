"""Distributed runs (pytest-xdist): users split over workers, one merged verdict.

The acceptance tests run ``isoharness run -- -n 2`` (and ``--tx 2*popen``, and two
``--tx ssh=…`` gateways through a real sshd on loopback) as real processes against
the reference service; the merge itself is pinned on literal
summaries.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.cli import default_scenarios
from harness.distributed import Shard, merge_summaries
from harness.run import MAX_FINDINGS, evidence_json
from tests.e2e_helpers import (
    SEED,
    harness_env,
    leaks,
    output_of,
    read_summary,
    reference_service,
    run_harness,
    seconds,
    secret_needles,
)
from tests.ssh_helpers import loopback_sshd

SMALL = ("--users", "4", "--tenants", "2", "--seed", str(SEED))
COUNTED = ("users", "connections", "messages_sent", "events_received", "http_probes")


# -- sharding ----------------------------------------------------------------------------------


def test_every_user_is_driven_by_exactly_one_worker():
    users = list(range(11))
    shares = [Shard(i, 3).select(users) for i in range(3)]
    assert sorted(u for share in shares for u in share) == users
    assert {len(share) for share in shares} == {3, 4}


def test_a_workers_share_spans_the_tenants():
    # Users are planned tenant by tenant in turn: t0/u0, t1/u0, t0/u1, t1/u1 …
    planned = [(f"t{i % 2}", f"u{i // 2}") for i in range(8)]
    assert Shard(0, 2).select(planned) == [("t0", "u0"), ("t1", "u0"), ("t0", "u1"), ("t1", "u1")]


def test_a_shard_outside_the_workers_is_refused():
    with pytest.raises(ValueError, match="worker 2 of 2"):
        Shard(2, 2)


# -- merging -----------------------------------------------------------------------------------


def scenario(sid: str, outcome: str = "passed", **coverage: int) -> dict[str, Any]:
    return {
        "id": sid,
        "outcome": outcome,
        "duration_s": 1.0,
        "violations": 0,
        "conditions": ["overlapping_runs", "shared_identifiers"],
        "missing_conditions": [],
        "coverage": coverage,
        "notes": [],
    }


def summary(verdict: str = "pass", *, scenarios=(), violations=(), **counts: int) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for v in violations:
        kinds[v["kind"]] = kinds.get(v["kind"], 0) + 1
    return {
        "schema": "isoharness.summary/1",
        "verdict": verdict,
        "exit_code": 0,
        "final": True,
        "run": {"id": "r"},
        "target": {"url": "http://127.0.0.1:1"},
        "counts": counts,
        "coverage": {},
        "probes": {},
        "violation_counts": kinds,
        "violations": list(violations),
        "errors": [],
        "scenarios": list(scenarios),
    }


def leak(victim: str, owner: str) -> dict[str, Any]:
    return {"kind": "cross_delivery", "victim": victim, "owner": owner, "detail": "d"}


CONTROLLER = summary("inconclusive")


def test_counts_are_summed_and_each_violation_names_both_workers():
    merged = merge_summaries(
        CONTROLLER,
        {
            "gw0": summary("fail", violations=[leak("t/a", "t/b")], users=2, connections=3),
            "gw1": summary("pass", users=2, connections=5),
        },
        users_of={"gw0": ["t/a"], "gw1": ["t/b"]},
    )
    assert merged["verdict"] == "fail"
    assert merged["exit_code"] == 1
    assert merged["counts"] == {"users": 4, "connections": 8}
    assert merged["violation_counts"] == {"cross_delivery": 1}
    (violation,) = merged["violations"]
    assert (violation["victim"], violation["worker"]) == ("t/a", "gw0")
    assert (violation["owner"], violation["owner_worker"]) == ("t/b", "gw1")
    assert violation["detail"] == "d [victim on worker gw0, owner on worker gw1]"
    assert [w["id"] for w in merged["workers"]] == ["gw0", "gw1"]


def test_a_condition_created_on_any_worker_counts():
    merged = merge_summaries(
        CONTROLLER,
        {
            "gw0": summary("inconclusive", scenarios=[scenario("s", "inconclusive", **{
                "overlapping_runs": 3})]),
            "gw1": summary("pass", scenarios=[scenario("s", **{
                "overlapping_runs": 2, "shared_identifiers": 1})]),
        },
    )  # fmt: skip
    assert merged["verdict"] == "pass"
    (merged_scenario,) = merged["scenarios"]
    assert merged_scenario["outcome"] == "passed"
    assert merged_scenario["coverage"]["overlapping_runs"] == 5
    assert merged["coverage"]["shared_identifiers"] == 1


def test_a_condition_no_worker_created_is_inconclusive():
    only_overlap = scenario("s", "inconclusive", overlapping_runs=1)
    merged = merge_summaries(
        CONTROLLER,
        {"gw0": summary("inconclusive", scenarios=[only_overlap]), "gw1": summary("inconclusive")},
    )
    assert merged["verdict"] == "inconclusive"
    assert merged["scenarios"][0]["missing_conditions"] == ["shared_identifiers"]


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (("fail", "interrupted"), "interrupted"),
        (("error", "fail"), "fail"),
        (("error", "pass"), "error"),
    ],
)
def test_the_merged_verdict_follows_the_precedence(verdicts, expected):
    workers = {}
    for n, verdict in enumerate(verdicts):
        violations = [leak("t/a", "t/b")] if verdict == "fail" else []
        workers[f"gw{n}"] = summary(verdict, violations=violations, scenarios=[scenario("s", **{
            "overlapping_runs": 1, "shared_identifiers": 1})])  # fmt: skip
    assert merge_summaries(CONTROLLER, workers)["verdict"] == expected


def test_a_worker_lost_without_a_summary_is_an_error():
    full = scenario("s", overlapping_runs=1, shared_identifiers=1)
    merged = merge_summaries(CONTROLLER, {"gw0": summary(scenarios=[full])}, lost=["gw1"])
    assert merged["verdict"] == "error"
    assert {"kind": "worker_lost", "detail": "gw1 went down without a summary", "count": 1} in (
        merged["errors"]
    )


def test_findings_are_capped_with_every_worker_represented():
    many = [leak("t/a", "t/b")] * MAX_FINDINGS
    merged = merge_summaries(
        CONTROLLER,
        {"gw0": summary("fail", violations=many), "gw1": summary("fail", violations=many)},
    )
    assert len(merged["violations"]) == MAX_FINDINGS
    assert merged["violation_counts"] == {"cross_delivery": 2 * MAX_FINDINGS}
    assert {v["worker"] for v in merged["violations"][:2]} == {"gw0", "gw1"}


def test_the_evidence_bound_is_computed_from_the_merged_count_of_events_checked():
    def worker(events: int) -> dict[str, Any]:
        return summary("pass", events_received=events) | {
            "evidence": evidence_json(events, cross_deliveries=0)
        }

    gw0, gw1 = worker(5000), worker(2719)
    merged = merge_summaries(CONTROLLER, {"gw0": gw0, "gw1": gw1})
    assert merged["evidence"] == evidence_json(7719, cross_deliveries=0)
    assert merged["evidence"]["one_in"] == 2577  # neither worker's 1,669 nor 908
    # A leak seen on any worker: no bound, whatever the other workers saw.
    leaked = summary("fail", violations=[leak("t/a", "t/b")], events_received=2719)
    assert "evidence" not in merge_summaries(CONTROLLER, {"gw0": gw0, "gw1": leaked})
    # No event checked anywhere: no block, even when the controller's summary had one.
    stale = CONTROLLER | {"evidence": evidence_json(10, cross_deliveries=0)}
    assert "evidence" not in merge_summaries(stale, {"gw0": summary("pass")})


# -- isoharness run -- -n 2 --------------------------------------------------------------------


def worker_summaries(report: Path) -> dict[str, dict[str, Any]]:
    return {path.parent.name: read_summary(path.parent) for path in report.glob("gw*/summary.json")}


def assert_counts_are_the_sum(report: Path) -> dict[str, Any]:
    merged = read_summary(report)
    workers = worker_summaries(report)
    assert sorted(workers) == ["gw0", "gw1"]
    assert [w["id"] for w in merged["workers"]] == ["gw0", "gw1"]
    for key in COUNTED:
        assert merged["counts"][key] == sum(w["counts"][key] for w in workers.values()), key
    assert all(w["counts"]["users"] > 0 for w in workers.values())
    return merged


def test_a_leak_between_users_on_different_workers_is_reported_with_both_users(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report"
    with reference_service("singleton_emitter") as url:
        proc = run_harness(
            "run", "--target-url", url, "--report-dir", str(report), *SMALL, "--duration", "2",
            "--", "-n", "2", "-k", "test_session_churn",
            cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, output_of(proc)
    merged = assert_counts_are_the_sum(report)
    assert merged["verdict"] == "fail"
    assert merged["final"] is True
    assert_a_leak_across_workers_names_both_users(report, merged)
    assert sum(merged["violation_counts"].values()) == sum(
        sum(w["violation_counts"].values()) for w in worker_summaries(report).values()
    )
    assert "isoharness: FAIL" in proc.stdout.splitlines()[-1]
    assert "gw0/events.jsonl" in (report / "report.html").read_text()
    assert not (report / "events.jsonl").exists()  # the controller saw no frame itself
    assert leaks(report, secret_needles(report / "gw0")) == []


def assert_a_leak_across_workers_names_both_users(report: Path, merged: dict[str, Any]) -> None:
    """A cross_delivery whose victim one worker drove and whose owner another did, both
    named in its detail."""
    across = [
        v
        for v in merged["violations"]
        if v["kind"] == "cross_delivery" and v.get("owner_worker") not in (None, v["worker"])
    ]
    assert across, merged["violation_counts"]
    leaked = across[0]
    assert leaked["victim"] in _driven_by(report, leaked["worker"])
    assert leaked["owner"] in _driven_by(report, leaked["owner_worker"])
    assert leaked["victim"] in leaked["detail"]
    assert leaked["owner"] in leaked["detail"]


def _driven_by(report: Path, worker: str) -> set[str]:
    """The users whose connections a worker opened, from its events.jsonl."""
    users = set()
    for line in (report / worker / "events.jsonl").read_bytes().splitlines():
        record = orjson.loads(line)
        if record.get("k") == "open":
            users.add(record["user"])
    return users


def test_a_correct_service_passes_over_two_local_gateways(tmp_path: Path) -> None:
    """``--tx 2*popen``: the way to other machines (``--tx ssh=…``), tried locally."""
    report = tmp_path / "report"
    proc = run_harness(
        "run", "--report-dir", str(report), *SMALL,
        "--", "--tx", "2*popen", "-k", "test_users_sending_at_once or test_tenants_with",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    merged = assert_counts_are_the_sum(report)
    assert merged["verdict"] == "pass"
    assert merged["target"]["embedded"] is True
    assert len(merged["scenarios"]) == 4
    for entry in merged["scenarios"]:
        assert entry["outcome"] == "passed", entry
        assert entry["worker_outcomes"] == {"gw0": "passed", "gw1": "passed"}
    # No one process has both the sessions and the memory samples: said, not guessed at.
    assert merged["memory"]["status"] == "not_judged"
    assert "without -n" in merged["memory"]["detail"]
    assert "memory_growth not judged in a distributed run" in proc.stdout  # at the end
    assert "distributed run: each worker drives a share" in proc.stdout  # and in the header
    assert proc.stdout.splitlines()[-1].startswith("isoharness: PASS")
    assert "rsyncdir" not in proc.stdout  # local gateways run the scenarios where they are
    # What the PASS rules out is judged over every worker's events, not one worker's share.
    checked = merged["counts"]["events_received"]
    assert merged["evidence"] == evidence_json(checked, cross_deliveries=0)
    assert all(w["evidence"]["events_checked"] < checked for w in worker_summaries(report).values())
    assert f"evidence: {checked:,} events checked;" in proc.stdout


def test_a_leak_between_users_on_two_ssh_gateways_is_reported_with_both_users(
    tmp_path: Path,
) -> None:
    """``--tx ssh=…`` (a real sshd on loopback): the scenarios go to the workers by
    xdist's rsync, and a leak across workers is merged as over ``-n 2``."""
    report, remote = tmp_path / "report", tmp_path / "remote"
    with loopback_sshd(tmp_path / "sshd") as ssh, reference_service("singleton_emitter") as url:
        gateway = f"{ssh}//python={sys.executable}//chdir={remote}"
        proc = run_harness(
            "run", "--target-url", url, "--report-dir", str(report), *SMALL, "--duration", "2",
            "--", "--tx", gateway, "--tx", gateway, "-k", "test_session_churn",
            cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, output_of(proc)
    assert (remote / "scenarios" / "pytest.ini").is_file()  # what the workers ran
    assert "remote workers get the scenarios through xdist's --rsyncdir" in proc.stdout
    assert "embedded service listens on this machine's loopback" not in proc.stdout
    merged = assert_counts_are_the_sum(report)
    assert merged["verdict"] == "fail"
    assert_a_leak_across_workers_names_both_users(report, merged)
    assert "isoharness: FAIL" in proc.stdout.splitlines()[-1]


def test_the_events_cap_bounds_the_whole_run_each_worker_writing_its_share(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report"
    proc = run_harness(
        "run", "--report-dir", str(report), *SMALL, "--events-max-mb", "0.02",
        "--", "-n", "2", "-k", "test_users_sending_at_once",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    merged = assert_counts_are_the_sum(report)
    assert merged["verdict"] == "pass"
    assert merged["run"]["settings"]["events_max_mb"] == 0.02  # the run's, not a share
    [capped] = [e for e in merged["errors"] if e["kind"] == "events_log_capped"]
    assert capped["count"] > 0
    for worker in ("gw0", "gw1"):
        lines = (report / worker / "events.jsonl").read_bytes().splitlines()
        assert orjson.loads(lines[-1])["k"] == "capped"
        assert sum(len(line) + 1 for line in lines[:-1]) <= 0.01 * 2**20


def test_distributing_scenarios_instead_of_users_is_refused(tmp_path: Path) -> None:
    proc = run_harness("run", *SMALL, "--", "-n", "2", "--dist", "load", cwd=tmp_path)
    assert proc.returncode == 2, output_of(proc)
    assert "--dist load is incompatible with isoharness" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_plain_pytest_distributes_the_shipped_scenarios(tmp_path: Path) -> None:
    """``pytest scenarios -n 2``: the scenarios' ini tells the controller to start the session."""
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(default_scenarios()), "-n", "2", "-q",
         "-k", "test_users_sending_at_once", "--report-dir", str(report), *SMALL],
        cwd=tmp_path, env=harness_env(), capture_output=True, text=True,
        timeout=seconds(120), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    merged = assert_counts_are_the_sum(report)
    assert merged["verdict"] == "pass"
    assert "isoharness: PASS" in proc.stdout


def test_a_worker_without_a_session_from_the_controller_says_how_to_get_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_mine.py").write_text("def test_it(harness):\n    harness.users(2)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, env=harness_env(), capture_output=True, text=True,
        timeout=seconds(60), check=False,
    )  # fmt: skip
    assert proc.returncode == 1, output_of(proc)
    assert "this pytest-xdist worker got no isoharness session from the controller" in proc.stdout
    assert not (tmp_path / "reports").exists()
