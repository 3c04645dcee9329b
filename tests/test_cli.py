"""The ``isoharness`` command: ``serve``, ``run``'s exit codes and messages, ``report``.

Exit codes are a contract (``harness/cli.py``): 0 pass, 1 violation, 2 usage
or configuration error, 3 target unusable, 4 inconclusive, 130 interrupted.
Every refusal is one line, names what to fix, and never shows a traceback or
the signing secret.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
from e2e_helpers import (
    SECRET,
    assert_tokens_file_refused,
    closed_port,
    harness_env,
    isoharness,
    leaks,
    lines_with,
    output_of,
    read_summary,
    reference_service,
    run_harness,
    seconds,
)


def test_serve_prints_a_url_that_answers_healthz_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [*isoharness(), "serve", "--port", "0", "--jwt-secret", SECRET],
        env=harness_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = next(line.strip() for line in proc.stdout if line.startswith("http"))
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/healthz", timeout=seconds(5)) as response:
            assert response.status == 200
            assert response.read() == b"ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=seconds(10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_names_itself_in_its_usage_and_its_one_line_errors() -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*isoharness(), "serve", *args],
            env=harness_env(),
            capture_output=True,
            text=True,
            timeout=seconds(30),
            check=False,
        )

    bad = serve("--jwt-secret", SECRET, "--think-ms", "5")
    assert bad.returncode == 2, output_of(bad)
    assert bad.stderr.splitlines() == [
        "isoharness serve: error: argument --think-ms: expected MIN,MAX integers with "
        "0 <= MIN <= MAX <= 60000 (e.g. 2,10), got '5'"
    ]
    assert bad.stdout == ""
    usage = serve("--help")
    assert usage.returncode == 0, output_of(usage)
    assert usage.stdout.startswith("usage: isoharness serve [-h]")


# -- configuration errors: exit 2, one line, nothing started ---------------------------------

#: A ``sitecustomize`` that makes any name lookup or connection fail loudly and leave a mark.
NO_NETWORK = """
import pathlib, socket

def _refuse(*args, **kwargs):
    pathlib.Path(__file__).with_name("network-used").write_text(repr(args))
    raise OSError("this test forbids the network")

socket.getaddrinfo = _refuse
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
"""


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        pytest.param(
            "users = -3\n",
            (),
            "isoharness: error: invalid users -3 from isoharness.toml: an integer from 2 to 100000",
            id="bad-value-in-config-file",
        ),
        pytest.param(
            "user = 3\n",
            (),
            "isoharness: error: invalid key 'user' from isoharness.toml: "
            "unknown key; did you mean 'users'?",
            id="unknown-key-in-config-file",
        ),
        pytest.param(
            None,
            ("--duration", "nonsense"),
            "isoharness: error: invalid duration 'nonsense' from --duration: a positive number "
            "of seconds, or a duration such as 30s, 30m, 8h, 1h30m, at most 720h (30 days)",
            id="bad-duration-flag",
        ),
        pytest.param(
            None,
            ("--target-url", "http://127.0.0.1:9"),
            "isoharness: error: missing jwt_secret: the jwt credential provider needs the "
            "target's signing secret: set $ISOHARNESS_JWT_SECRET, --jwt-secret or "
            "jwt_secret_file (or choose --credentials static or hook)",
            id="no-secret-to-mint-tokens-for-a-given-target",
        ),
        pytest.param(
            None,
            ("--credentials", "hook", "--login-hook", "no_such_module_xyz:login"),
            "isoharness: error: invalid login_hook 'no_such_module_xyz:login' from --login-hook: "
            "an importable 'package.module:function' (ModuleNotFoundError: No module named "
            "'no_such_module_xyz')",
            id="a-login-hook-that-does-not-import",
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exits_2(
    tmp_path: Path, config: str | None, args: tuple[str, ...], message: str
) -> None:
    if config is not None:
        (tmp_path / "isoharness.toml").write_text(config)
    proc = run_harness("run", *args, cwd=tmp_path, secret=None)
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [message]
    assert proc.stdout == ""
    assert not (tmp_path / "reports").exists()


def test_a_tokens_file_without_two_users_is_one_line_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "tokens.txt").write_text("acme alice tok-a\n")
    assert_tokens_file_refused(
        tmp_path,
        "tokens of at least two users (it has 1): isolation needs someone to be isolated from",
        ["tok-a"],
    )


@pytest.mark.parametrize(
    ("report_dir", "why"), [("taken", "File exists"), ("taken/run1", "Not a directory")]
)
def test_a_report_folder_that_cannot_be_made_is_one_line_before_the_run(
    tmp_path: Path, report_dir: str, why: str
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder\n")
    proc = run_harness("run", "--report-dir", report_dir, cwd=tmp_path)
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [
        f"isoharness: error: invalid report_dir '{tmp_path / report_dir}' from "
        f"--report-dir: a folder that can be made ({why})"
    ]
    assert proc.stdout == ""


def test_a_non_loopback_target_is_refused_before_any_network_use(tmp_path: Path) -> None:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target-url", "https://staging.example.com"],
        cwd=tmp_path,
        env=harness_env(PYTHONPATH=str(guard), ISOHARNESS_JWT_SECRET=SECRET),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert proc.returncode == 2, output_of(proc)
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        "isoharness: error: invalid target_url 'https://staging.example.com' from --target-url: "
        "staging.example.com is not loopback and matches no allowed_targets pattern"
    )
    assert not (guard / "network-used").exists()
    assert not (tmp_path / "reports").exists()
    assert SECRET not in proc.stdout + proc.stderr


# -- an unusable target: exit 3, one line, a summary saying "error" --------------------------


def test_an_unreachable_target_exits_3_with_one_reason_and_an_error_summary(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report"
    url = f"http://127.0.0.1:{closed_port()}"
    proc = run_harness("run", "--target-url", url, "--report-dir", str(report), cwd=tmp_path)
    assert proc.returncode == 3, output_of(proc)
    output = proc.stdout + proc.stderr
    assert len(lines_with(output, [url, "is unusable", "cannot connect"])) == 1, output
    assert "Traceback" not in output
    summary = read_summary(report)
    assert summary["verdict"] == "error"
    assert summary["exit_code"] == 3
    assert summary["final"] is True
    assert [e["kind"] for e in summary["errors"]] == ["target_unusable"]


def test_a_wrong_secret_exits_3_saying_the_handshake_was_refused(tmp_path: Path) -> None:
    wrong = "not-the-service-secret-" + "w" * 24
    report = tmp_path / "report"
    with reference_service() as url:
        proc = run_harness(
            "run", "--target-url", url, "--report-dir", str(report), cwd=tmp_path, secret=wrong
        )
    assert proc.returncode == 3, output_of(proc)
    output = proc.stdout + proc.stderr
    [line] = lines_with(output, ["is unusable"])
    assert "handshake was refused (401)" in line
    assert "Traceback" not in output
    assert wrong not in output
    assert SECRET not in output
    assert read_summary(report)["verdict"] == "error"
    assert leaks(report, {"the secret": wrong.encode()}) == []


def test_a_short_signing_secret_is_one_warning_line_and_the_run_goes_on(tmp_path: Path) -> None:
    short = "short-secret-0123456"  # 20 bytes: pyjwt warns below 32
    report = tmp_path / "report"
    proc = run_harness(
        "run", "--report-dir", str(report), "--users", "4", "--tenants", "2",
        "--", "-k", "test_users_sending_at_once", "-q",
        cwd=tmp_path, secret=short,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert short not in output  # before anything that would print the output
    assert proc.returncode == 0, output_of(proc)
    assert read_summary(report)["verdict"] == "pass"
    assert lines_with(proc.stderr, ["warning"]) == [
        "isoharness: warning: the JWT signing secret is shorter than 32 bytes (RFC 7518 §3.2); "
        "sign with 32 or more random bytes, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    ]
    assert "warning" not in proc.stdout.lower()  # no Python warning, no pytest warnings summary
    assert "InsecureKeyLengthWarning" not in output
    assert leaks(report, {"the secret": short.encode()}) == []


# -- help and report ---------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "--help"],
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert proc.returncode == 0, output_of(proc)
    assert proc.stdout.startswith("usage: isoharness")
    for command in ("run", "soak", "serve", "report"):
        assert f"    {command} " in proc.stdout


def test_report_rewrites_report_html_from_a_report_folder(tmp_path: Path) -> None:
    report = tmp_path / "report"
    url = f"http://127.0.0.1:{closed_port()}"
    run_harness("run", "--target-url", url, "--report-dir", str(report), cwd=tmp_path)
    (report / "report.html").unlink()
    proc = subprocess.run(
        [*isoharness(), "report", str(report)],
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert proc.returncode == 0, output_of(proc)
    assert (report / "report.html").is_file()
    assert str(report / "report.html") in proc.stdout
    assert "<html" in (report / "report.html").read_text().lower()


def test_report_of_a_folder_without_a_summary_exits_2_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*isoharness(), "report", str(tmp_path)],
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [
        f"isoharness: error: {tmp_path} has no summary.json; pass a report folder"
    ]


def test_a_run_past_its_events_cap_still_checks_everything_and_says_what_it_left_out(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report"
    proc = run_harness(
        "run", "--report-dir", str(report), "--events-max-mb", "0.02",
        "--", "-k", "test_users_sending_at_once", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    summary = read_summary(report)
    assert summary["verdict"] == "pass"
    [capped] = [e for e in summary["errors"] if e["kind"] == "events_log_capped"]
    assert "0.02 MiB" in capped["detail"]
    assert capped["count"] > 0
    assert summary["counts"]["events_received"] > 100  # all of them checked, written or not
    lines = (report / "events.jsonl").read_bytes().splitlines()
    assert orjson.loads(lines[-1])["k"] == "capped"
    assert sum(len(line) + 1 for line in lines[:-1]) <= 0.02 * 2**20
