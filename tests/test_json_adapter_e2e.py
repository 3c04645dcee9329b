"""The declarative JSON adapter, end to end, configured by a file alone.

Each test writes an ``isoharness.toml`` (or a ``pyproject.toml``) describing the
reference service's ``renamed`` dialect (``--dialect renamed``: other field
names, other event types, the token in the first message), starts that
service, and runs ``python -m harness run`` in the folder: no flag but the
report folder and a scenario selection. A correct service passes, a planted
cross-delivery bug fails with the right victim and owner, and a refused token
is a one-line error with exit code 3.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from e2e_helpers import SEED, output_of, read_summary, reference_service, run_harness

#: The renamed dialect, described for the json adapter (README "Testing your own service").
ADAPTER_TABLE = """\
name = "json"
lifecycle = ["run.start", "run.think", "tool.call", "tool.done", "run.end"]
repeatable = ["run.think"]
error_types = ["oops"]
ignore_types = ["pong"]
message = { op = "say", conv = "{thread_id}", msg = "{message_id}", text = "{content}" }

[ADAPTER.fields]
type = "kind"
message_id = "msg"
thread_id = "conv"
run_id = "run"
user_id = "who.uid"
tenant_id = "who.org"
seq = "n"
data = "body"
error_code = "code"
error_message = "detail"

[ADAPTER.auth]
mode = "first_message"
message = { op = "hello", auth = { bearer = "{token}" } }
ready_type = "hello.ok"
refused_types = ["hello.denied"]
timeout = 5
"""
SIZES = f"users = 4\ntenants = 2\nseed = {SEED}\n"


def isoharness_toml(url: str, *settings: str) -> str:
    table = ADAPTER_TABLE.replace("ADAPTER", "adapter")
    top = "".join(f"{line}\n" for line in settings)
    return f'target_url = "{url}"\n{SIZES}{top}\n[adapter]\n{table}'


def pyproject_toml(url: str) -> str:
    table = ADAPTER_TABLE.replace("ADAPTER", "tool.isoharness.adapter")
    return (
        '[project]\nname = "my-service"\n\n'
        f'[tool.isoharness]\ntarget_url = "{url}"\n{SIZES}\n'
        f"[tool.isoharness.adapter]\n{table}"
    )


def renamed_service(*faults: str) -> AbstractContextManager[str]:
    """The reference service speaking the renamed dialect, with ``faults``."""
    return reference_service(*faults, extra_args=["--dialect", "renamed"])


def test_a_correct_service_passes_with_the_config_file_alone(tmp_path: Path) -> None:
    """With the fast transport: its batched reads must keep the frames after ``hello.ok``."""
    report = tmp_path / "report"
    with renamed_service() as url:
        (tmp_path / "isoharness.toml").write_text(isoharness_toml(url, 'transport = "fast"'))
        proc = run_harness(
            "run", "--report-dir", str(report),
            "--", "-k", "sending_at_once or every_connection or drop_mid_run or thread_ids",
            cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    summary = read_summary(report)
    assert (summary["verdict"], summary["target"]["adapter"]) == ("pass", "json")
    assert summary["run"]["settings"]["transport"] == "fast"
    assert summary["counts"]["events_received"] > 100
    outcomes = {s["id"].split("::")[1]: s["outcome"] for s in summary["scenarios"]}
    # The history scenario needs AEP/1's HTTP API, which this adapter does not have.
    assert outcomes.pop("test_users_reusing_thread_ids_see_only_their_own_history") == "skipped", (
        outcomes
    )
    assert set(outcomes.values()) == {"passed"}, outcomes
    assert len(outcomes) == 5
    assert proc.stdout.splitlines()[-1].startswith("isoharness: PASS — 0 violation(s)")


@pytest.mark.parametrize("fault", ["singleton_emitter", "tenant_broadcast"])
def test_a_planted_cross_delivery_bug_fails_with_victim_and_owner(
    tmp_path: Path, fault: str
) -> None:
    report = tmp_path / "report"
    with renamed_service(fault) as url:
        (tmp_path / "isoharness.toml").write_text(isoharness_toml(url))
        proc = run_harness(
            "run", "--report-dir", str(report), "--", "-k", "sending_at_once and 4",
            cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, output_of(proc)
    summary = read_summary(report)
    assert summary["verdict"] == "fail"
    assert summary["violation_counts"]["cross_delivery"] > 0
    leaks = [v for v in summary["violations"] if v["kind"] == "cross_delivery"]
    for leak in leaks[:20]:
        assert leak["victim"] != leak["owner"], leak
        # The raw frame, in the renamed dialect, names its owner, not the victim.
        tenant, sub = leak["owner"].split("/", 1)
        assert f'"who":{{"uid":"{sub}","org":"{tenant}"}}' in leak["evidence"]["raw"], leak
        assert leak["evidence"]["seed"] == SEED
    if fault == "tenant_broadcast":
        # It leaks inside a tenant only, and the witness must not overstate it.
        assert {leak["crosses_tenant"] for leak in leaks} == {False}
        assert {v["victim"].split("/")[0] == v["owner"].split("/")[0] for v in leaks} == {True}


def test_a_refused_token_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """The tokens are minted with the wrong secret: the service denies the hello."""
    report = tmp_path / "report"
    with renamed_service() as url:
        (tmp_path / "pyproject.toml").write_text(pyproject_toml(url))
        proc = run_harness(
            "run", "--report-dir", str(report), cwd=tmp_path,
            secret="not-the-service-secret-0123456789abcdefghij",
        )  # fmt: skip
    assert proc.returncode == 3, output_of(proc)
    ws_url = url.replace("http://", "ws://") + "/ws"
    line = (
        f"isoharness: error: target {ws_url} is unusable: the auth message was refused: "
        """'{"kind":"hello.denied","why":"unauthorized"}'"""
    )
    assert line in proc.stderr.splitlines(), output_of(proc)
    assert read_summary(report)["verdict"] == "error"


def test_a_mistake_in_the_adapter_table_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = isoharness_toml("http://127.0.0.1:9").replace('user_id = "who.uid"', 'usr_id = "x"')
    (tmp_path / "isoharness.toml").write_text(config)
    proc = run_harness("run", "--report-dir", str(tmp_path / "report"), cwd=tmp_path)
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [
        "isoharness: error: invalid adapter option 'fields.usr_id' from isoharness.toml "
        "[adapter]: unknown key; did you mean 'fields.user_id'?"
    ], output_of(proc)
