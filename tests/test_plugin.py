"""The pytest plugin, as a user meets it: a scenario file of their own under plain pytest.

pytester acceptance tests (``makepyfile`` → ``runpytest_subprocess`` →
``fnmatch_lines``). Each run is a separate pytest process, because the plugin
installs a SIGTERM handler and keeps per-session state. The pytester folder is
the working directory, so ``reports/`` is made there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from e2e_helpers import SECRET, SEED, reference_service

from harness.settings import OPTIONS

NO_CACHE = ("-p", "no:cacheprovider")

SCENARIO = """
import pytest


@pytest.mark.conditions("overlapping_runs")
def test_users_chatting_at_once_get_only_their_own_events(harness):
    users = harness.users()
    harness.chat(users, messages=4, connections=1)
    harness.verify()
"""

NEVER_RECONNECTS = """
import pytest


@pytest.mark.conditions("reconnects")
def test_reconnecting_users_get_only_their_own_events(harness):
    users = harness.users()
    harness.chat(users, messages=1, connections=1)
    harness.verify()
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``ISOHARNESS_*`` setting from the developer's shell; the test secret set."""
    for name in [n for n in os.environ if n.startswith("ISOHARNESS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ISOHARNESS_JWT_SECRET", SECRET)


@pytest.fixture
def target(clean_env: None) -> Iterator[str]:
    """A correct reference service."""
    with reference_service() as url:
        yield url


@pytest.fixture
def faulty_target(clean_env: None) -> Iterator[str]:
    """A reference service whose one emitter sends events to whichever user asked last."""
    with reference_service("singleton_emitter") as url:
        yield url


def run_scenarios(pytester: pytest.Pytester, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--target-url", url, "--users", "4", "--seed", str(SEED), *NO_CACHE, *args
    )


def only_summary(pytester: pytest.Pytester) -> dict[str, object]:
    [summary] = [
        path
        for path in (pytester.path / "reports").glob("*/summary.json")
        if path.parent.name != "latest"
    ]
    doc: dict[str, object] = orjson.loads(summary.read_bytes())
    return doc


def test_a_users_scenario_passes_against_a_correct_service(
    pytester: pytest.Pytester, target: str
) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    result = run_scenarios(pytester, target)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["isoharness: PASS * report: reports/*/report.html"])
    summary = only_summary(pytester)
    assert summary["verdict"] == "pass"
    assert summary["final"] is True


def test_a_pass_ends_with_the_leak_rate_it_rules_out_just_before_the_verdict(
    pytester: pytest.Pytester, target: str
) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    result = run_scenarios(pytester, target)
    assert result.ret == 0
    evidence = only_summary(pytester)["evidence"]
    assert isinstance(evidence, dict)
    checked, one_in = evidence["events_checked"], evidence["one_in"]
    assert checked > 0
    assert one_in == math.floor(1 / (1 - 0.05 ** (1 / checked)))
    lines = result.stdout.lines
    [verdict] = [i for i, line in enumerate(lines) if line.startswith("isoharness: PASS")]
    assert lines[verdict - 1] == (
        f"evidence: {checked:,} events checked; a leak hitting more than 1 in {one_in:,} "
        "events would have shown (95%)"
    )


def test_a_users_scenario_fails_with_exit_1_naming_cross_delivery(
    pytester: pytest.Pytester, faulty_target: str
) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    result = run_scenarios(pytester, faulty_target)
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*cross_delivery*", "isoharness: FAIL *"])
    assert SECRET not in result.stdout.str() + result.stderr.str()
    assert only_summary(pytester)["verdict"] == "fail"


def test_a_scenario_that_never_creates_its_conditions_is_inconclusive_exit_4(
    pytester: pytest.Pytester, target: str
) -> None:
    pytester.makepyfile(test_my_service=NEVER_RECONNECTS)
    result = run_scenarios(pytester, target, "-rs")
    result.assert_outcomes(skipped=1)
    assert result.ret == 4
    result.stdout.fnmatch_lines(["SKIPPED *inconclusive: the scenario created no reconnects*"])
    assert only_summary(pytester)["verdict"] == "inconclusive"


def test_a_bad_option_ends_the_session_with_exit_2_in_one_line(
    pytester: pytest.Pytester, clean_env: None
) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    result = pytester.runpytest_subprocess(
        "--target-url", "http://127.0.0.1:9", "--users", "-3", *NO_CACHE
    )
    assert result.ret == 2
    output = result.stdout.lines + result.stderr.lines
    message = "isoharness: invalid users '-3' from --users: an integer from 2 to 100000"
    assert len([line for line in output if message in line]) == 1, output
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_bad_adapter_table_found_at_start_is_exit_2_in_the_summary_too(
    pytester: pytest.Pytester, target: str
) -> None:
    # Plain pytest: nothing checks the [adapter] table before the run folder exists.
    pytester.makepyfile(test_my_service=SCENARIO)
    (pytester.path / "isoharness.toml").write_text('[adapter]\nname = "nats"\nbogus = 1\n')
    result = run_scenarios(pytester, target)
    assert result.ret == 2
    output = result.stdout.lines + result.stderr.lines
    message = "isoharness: invalid adapter option 'bogus' from isoharness.toml [adapter]"
    assert len([line for line in output if message in line]) == 1, output
    summary = only_summary(pytester)
    assert (summary["verdict"], summary["exit_code"], summary["final"]) == ("error", 2, True)
    assert [e["kind"] for e in summary["errors"]] == ["config_error"]


BROKEN_ADAPTER = """
from harness.aep import AEP_CODEC


class Broken:
    name = "broken"
    codec = AEP_CODEC
    capabilities = frozenset()

    async def open(self, user):
        raise RuntimeError("the upstream refused Authorization: Bearer " + user.token)

    def memory_probe(self):
        return None

    async def aclose(self):
        return None


def create(context):
    return Broken()
"""


def test_an_unexpected_error_while_starting_is_one_masked_line_exit_3_and_an_error_summary(
    pytester: pytest.Pytester, target: str
) -> None:
    # A custom adapter whose open() fails in a way nobody planned for, quoting a token.
    pytester.makepyfile(test_my_service=SCENARIO, broken_adapter=BROKEN_ADAPTER)
    result = run_scenarios(pytester, target, "--adapter", "broken_adapter:create")
    assert result.ret == 3
    output = result.stdout.str() + result.stderr.str()
    message = (
        "isoharness: the session failed to start: RuntimeError: the upstream refused "
        "Authorization: Bearer ***"
    )
    assert len([line for line in output.splitlines() if message in line]) == 1, output
    assert "Traceback" not in output
    assert "eyJ" not in output
    summary = only_summary(pytester)
    assert (summary["verdict"], summary["exit_code"], summary["final"]) == ("error", 3, True)
    assert [e["kind"] for e in summary["errors"]] == ["harness_error"]


def test_a_report_folder_that_cannot_be_made_ends_the_session_with_exit_2_in_one_line(
    pytester: pytest.Pytester, target: str
) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    (pytester.path / "taken").write_text("a file, not a folder\n")
    result = run_scenarios(pytester, target, "--report-dir", "taken")
    assert result.ret == 2
    output = result.stdout.lines + result.stderr.lines
    taken = pytester.path / "taken"
    message = (
        f"isoharness: invalid report_dir '{taken}' from --report-dir: "
        "a folder that can be made (File exists)"
    )
    assert len([line for line in output if message in line]) == 1, output
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_secret_in_a_scenarios_error_is_masked_in_the_output_and_in_junit_xml(
    pytester: pytest.Pytester, target: str
) -> None:
    # A scenario (or a library under it) may put a credential in an exception's text.
    jwt_shaped = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLWFsaWNl"
    pytester.makepyfile(
        test_my_service=f"""
def test_a_scenario_whose_error_names_credentials(harness):
    harness.users()
    raise RuntimeError("login failed: Bearer {jwt_shaped} signed with {SECRET}")
"""
    )
    result = run_scenarios(pytester, target, "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    assert result.ret == 3  # a scenario that errs: the verdict is error
    junit = (pytester.path / "junit.xml").read_text()
    output = result.stdout.str() + result.stderr.str()
    for where in (output, junit):
        assert "RuntimeError: login failed: Bearer ***" in where
        assert jwt_shaped not in where
        assert SECRET not in where


def test_the_plugin_is_inert_when_no_test_asks_for_the_harness(
    pytester: pytest.Pytester, clean_env: None
) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_arithmetic():
            assert 1 + 1 == 2
        """
    )
    result = pytester.runpytest_subprocess(*NO_CACHE)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert not (pytester.path / "reports").exists()
    result.stdout.no_fnmatch_line("isoharness*")


def test_pytest_help_lists_every_isoharness_option(
    pytester: pytest.Pytester, clean_env: None
) -> None:
    result = pytester.runpytest_subprocess("--help", *NO_CACHE)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["isoharness: multi-tenant isolation checks:"])
    for spec in OPTIONS:
        result.stdout.fnmatch_lines([f"  {spec.flag}*"])
    result.stdout.fnmatch_lines(["  --isoharness-config=*"])


def test_the_report_header_names_the_target_and_the_seed(
    pytester: pytest.Pytester, target: str
) -> None:
    """STYLE.md §8: ``pytest_report_header`` prints the target, the seed and the sizes."""
    pytester.makepyfile(test_my_service=SCENARIO)
    result = run_scenarios(pytester, target)
    header = result.stdout.lines[: result.stdout.lines.index("") + 1]
    result.stdout.fnmatch_lines([f"isoharness*{target}*", "collected 1 item"])
    assert any(target in line and str(SEED) in line for line in header), header
    assert any("(aep adapter, fast transport)" in line for line in header), header


def test_reports_go_to_the_working_directory(pytester: pytest.Pytester, target: str) -> None:
    pytester.makepyfile(test_my_service=SCENARIO)
    run_scenarios(pytester, target)
    [folder] = [p for p in (pytester.path / "reports").iterdir() if p.name != "latest"]
    assert {p.name for p in folder.iterdir()} >= {"summary.json", "events.jsonl", "report.html"}
    assert (pytester.path / "reports" / "latest").resolve() == Path(folder).resolve()
