"""Bad credentials under ``isoharness run``: one line naming the fix, the documented exit
code, no traceback, and no token on the terminal or in the report folder.

A tokens file is checked before pytest starts (exit 2, no report folder); a login hook is
first called for the preflight's user, before any scenario (exit 2, the report says why).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    SECRET,
    assert_tokens_file_refused,
    harness_env,
    output_of,
    read_summary,
    reference_service,
    run_harness,
    seconds,
)

from harness.credentials import JwtCredentials
from harness.types import TenantId, UserId, UserKey

HOOKS = """
import time
import jwt

SECRET = {secret!r}

def token(user):
    claims = {{"sub": user.user, "tenant": user.tenant, "exp": int(time.time()) + 3600}}
    return jwt.encode(claims, SECRET, algorithm="HS256")

def number(user):
    return 42

def header_injection(user):
    return token(user) + "\\r\\nX-Evil: 1"

def one_account(user):
    return token(type(user)("t0", "shared"))

def only_for_the_preflight(user):
    return token(user) if user.user == "pre" else 42

def slow(user):
    open("hook-called", "w").close()
    time.sleep(60)
    return token(user)
"""


def run_with_hook(tmp_path: Path, url: str, hook: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "run_hooks.py").write_text(HOOKS.format(secret=SECRET))
    return subprocess.run(
        [sys.executable, "-m", "harness", "run", "--target-url", url]
        + ["--credentials", "hook", "--login-hook", f"run_hooks:{hook}"]
        + ["--report-dir", str(tmp_path / "report"), "--", "-k", "concurrent_users", "-q"],
        cwd=tmp_path,
        env=harness_env(PYTHONPATH=str(tmp_path)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds(120),
        check=False,
    )


def output_and_report(proc: subprocess.CompletedProcess[str], report: Path) -> str:
    """Everything the run printed and wrote to its report folder."""
    written = [p.read_text(errors="replace") for p in report.rglob("*") if p.is_file()]
    return proc.stdout + proc.stderr + "".join(written)


@pytest.mark.parametrize(
    ("hook", "what"),
    [
        (
            "number",
            "it returned int for {user}, not a token; a login hook must return the "
            "user's token as a non-empty str (or an awaitable of one)",
        ),
        (
            "one_account",
            "it returned t0/shared's token (its sub and tenant claims) for {user}; a login "
            "hook must log in as the user it is given",
        ),
        (
            "header_injection",
            "it returned a token for {user} with a character an HTTP "
            "header cannot carry (CR at position N); a login hook must return the token alone",
        ),
    ],
)
def test_a_login_hook_giving_no_usable_token_stops_the_run_with_exit_2(
    tmp_path: Path, hook: str, what: str
) -> None:
    with reference_service() as url:
        proc = run_with_hook(tmp_path, url, hook)
    assert proc.returncode == 2, output_of(proc)
    refusals = [line for line in proc.stdout.splitlines() if "invalid login_hook" in line]
    assert len(refusals) == 1, output_of(proc)
    user = refusals[0].split(" for ", 1)[1].split()[0].rstrip(",;")
    assert user.endswith("-pre/pre")  # the preflight's user, before any scenario
    # The position of the CR is the token's length, which depends on the run's tag.
    # (pytest's exit banner around it: "! _pytest.outcomes.Exit: ... !")
    assert (
        f"isoharness: invalid login_hook 'run_hooks:{hook}' from --login-hook: "
        f"{what.format(user=user)}"
    ) in re.sub(r"position \d+", "position N", refusals[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    summary = read_summary(tmp_path / "report")
    assert (summary["verdict"], summary["exit_code"]) == ("error", 2)
    assert [e["kind"] for e in summary["errors"]] == ["config_error"]
    assert "eyJ" not in output_and_report(proc, tmp_path / "report")  # a JWT's first bytes


def test_a_login_hook_failing_for_a_scenarios_user_fails_it_in_one_line(tmp_path: Path) -> None:
    with reference_service() as url:
        proc = run_with_hook(tmp_path, url, "only_for_the_preflight")
    assert proc.returncode == 3, output_of(proc)
    # The failure sections; the short summary (whole lines under CI) repeats them after "FAILED".
    refusals = [
        line
        for line in proc.stdout.splitlines()
        if line.startswith("isoharness: invalid login_hook")
    ]
    assert len(refusals) == 2, output_of(proc)  # both instances of the scenario
    assert refusals[0].startswith(
        "isoharness: invalid login_hook 'run_hooks:only_for_the_preflight' from --login-hook: "
        "it returned int for "
    )
    assert "Traceback" not in proc.stdout
    assert "harness/credentials.py" not in proc.stdout
    assert read_summary(tmp_path / "report")["verdict"] == "error"


def tokens_file(path: Path, users: list[UserKey]) -> list[str]:
    minting = JwtCredentials(SECRET)
    tokens = [minting.mint(user) for user in users]
    lines = [f"{u.tenant} {u.user} {t}" for u, t in zip(users, tokens, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return tokens


USERS = [UserKey(TenantId(f"t{i % 2}"), UserId(f"u{i // 2}")) for i in range(8)]


def test_a_tokens_file_giving_a_user_two_tokens_is_one_line_before_the_run(
    tmp_path: Path,
) -> None:
    tokens = tokens_file(tmp_path / "tokens.txt", [*USERS, USERS[2]])
    assert_tokens_file_refused(
        tmp_path, "lines 3 and 9 both give a token for t0/u1; keep one line per user", tokens
    )


def test_a_token_filed_under_another_user_is_one_line_before_the_run(tmp_path: Path) -> None:
    # Run against a service, each of u2's events would look delivered to t1/u1.
    minting = JwtCredentials(SECRET)
    tokens = [minting.mint(user) for user in USERS]
    tokens[3], tokens[4] = tokens[4], tokens[3]
    lines = [f"{u.tenant} {u.user} {t}" for u, t in zip(USERS, tokens, strict=True)]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    assert_tokens_file_refused(
        tmp_path,
        "the token on line 4 is t0/u2's (its sub and tenant claims), not t1/u1's; "
        "put each token on its own user's line",
        tokens,
    )


def test_a_tokens_file_with_fewer_users_than_users_is_one_line_before_the_run(
    tmp_path: Path,
) -> None:
    tokens = tokens_file(tmp_path / "tokens.txt", USERS[:6])
    assert_tokens_file_refused(
        tmp_path,
        "it has tokens for 6 users and the run needs 8 (users 8 from default); "
        "add tokens or lower --users",
        tokens,
    )


def test_a_scenario_needing_more_users_than_the_tokens_file_has_is_one_line(
    tmp_path: Path,
) -> None:
    # --users 6 passes the check before the run; test_tenants[4] asks for 2 x 4 users.
    tokens = tokens_file(tmp_path / "tokens.txt", USERS[:6])
    with reference_service() as url:
        proc = run_harness(
            "run", "--target-url", url, "--users", "6", "--credentials", "static",
            "--tokens-file", "tokens.txt", "--report-dir", "report",
            "--", "-k", "test_tenants_with_the_same_user_ids", "-q",
            cwd=tmp_path, secret=None,
        )  # fmt: skip
    assert proc.returncode == 3, output_of(proc)
    assert (
        "isoharness: the tokens file has 6 users and this scenario needs 8; "
        "add tokens or lower --users"
    ) in proc.stdout.splitlines()
    assert "Traceback" not in proc.stdout
    assert "harness/scenario.py" not in proc.stdout
    outcomes = {r["id"][-3:]: r["outcome"] for r in read_summary(tmp_path / "report")["scenarios"]}
    assert outcomes == {"[2]": "passed", "[4]": "error"}
    written = (
        proc.stdout
        + proc.stderr
        + "".join(
            p.read_text(errors="replace") for p in (tmp_path / "report").rglob("*") if p.is_file()
        )
    )
    assert not any(token in written for token in tokens)


def test_sigterm_while_a_slow_login_hook_runs_is_an_interrupted_run(tmp_path: Path) -> None:
    # The session is still starting (the preflight's token): SIGTERM ends it like Ctrl-C.
    (tmp_path / "run_hooks.py").write_text(HOOKS.format(secret=SECRET))
    report = tmp_path / "report"
    with reference_service() as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--target-url", url]
            + ["--credentials", "hook", "--login-hook", "run_hooks:slow"]
            + ["--report-dir", str(report)],
            cwd=tmp_path,
            env=harness_env(PYTHONPATH=str(tmp_path)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + seconds(30)
            while not (tmp_path / "hook-called").exists():
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the login hook was never called"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=seconds(10))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    summary = read_summary(report)
    assert (summary["verdict"], summary["final"], summary["exit_code"]) == (
        "interrupted",
        True,
        130,
    )
