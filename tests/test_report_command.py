"""``isoharness report DIR``: ``report.html`` re-rendered from a run's folder.

A ``summary.json`` the harness could not have written (damaged, another schema,
a key of the wrong type) is refused in one line naming the file, with exit 2
(a usage error), and the folder's ``report.html``, the run's evidence, is left
byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import SMALL, output_of, run_harness

from harness.distributed import merge_summaries

RESTORE = "restore the summary.json the run wrote, or run again"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report folder of one real run against the embedded reference service."""
    cwd = tmp_path_factory.mktemp("run")
    folder = cwd / "report"
    proc = run_harness(
        "run", "--report-dir", str(folder), *SMALL,
        "--", "-k", "test_users_sending_at_once", "-q",
        cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, output_of(proc)
    return folder


@pytest.fixture
def folder(real_run: Path, tmp_path: Path) -> Path:
    """A copy of the real run's folder, for a test to damage."""
    return Path(shutil.copytree(real_run, tmp_path / "report"))


def report(folder: Path) -> subprocess.CompletedProcess[str]:
    return run_harness("report", str(folder), cwd=folder.parent, timeout_s=60)


def edit_summary(folder: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = folder / "summary.json"
    summary = orjson.loads(path.read_bytes())
    changed = change(summary)
    path.write_bytes(orjson.dumps(summary if changed is None else changed))


def assert_refused(proc: subprocess.CompletedProcess[str], folder: Path, message: str) -> None:
    assert proc.returncode == 2, output_of(proc)
    assert proc.stderr.splitlines() == [f"isoharness: error: {folder / 'summary.json'} {message}"]
    assert proc.stdout == ""


def test_a_truncated_summary_exits_2_in_one_line_and_keeps_report_html(folder: Path) -> None:
    before = (folder / "report.html").read_bytes()
    files = sorted(os.listdir(folder))
    whole = (folder / "summary.json").read_bytes()
    (folder / "summary.json").write_bytes(whole[: len(whole) // 2])

    proc = report(folder)

    assert proc.returncode == 2, output_of(proc)
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        f"isoharness: error: {folder / 'summary.json'} is not a run summary: "
        "not valid JSON (unexpected end of data"
    )
    assert line.endswith(f"; {RESTORE}")
    assert "Traceback" not in proc.stderr
    assert (folder / "report.html").read_bytes() == before
    assert sorted(os.listdir(folder)) == files


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"garbage", "not valid JSON (unexpected character"),
        (bytes(range(256)) * 4, "not valid JSON ("),
        (b"[1, 2, 3]", "a JSON array, not an object"),
        (b'"summary"', "a JSON string, not an object"),
    ],
)
def test_a_summary_json_that_is_not_an_object_exits_2_and_keeps_report_html(
    folder: Path, content: bytes, problem: str
) -> None:
    before = (folder / "report.html").read_bytes()
    (folder / "summary.json").write_bytes(content)

    proc = report(folder)

    assert proc.returncode == 2, output_of(proc)
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"isoharness: error: {folder / 'summary.json'} is not a run summary: ")
    assert problem in line
    assert line.endswith(f"; {RESTORE}")
    assert (folder / "report.html").read_bytes() == before


def test_a_summary_of_another_schema_exits_2_and_keeps_report_html(folder: Path) -> None:
    before = (folder / "report.html").read_bytes()
    edit_summary(folder, lambda s: s.update(schema="other/9"))

    proc = report(folder)

    assert_refused(
        proc,
        folder,
        "is not a run summary: schema 'other/9' (expected 'isoharness.summary/1'); "
        "render it with the isoharness version that wrote it",
    )
    assert (folder / "report.html").read_bytes() == before


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("verdict", "PASSED", "invalid verdict 'PASSED' "
         "(expected one of pass, fail, error, inconclusive, interrupted)"),
        ("verdict", None, "invalid verdict null "
         "(expected one of pass, fail, error, inconclusive, interrupted)"),
        ("exit_code", "zero", "invalid exit_code 'zero' (expected an integer)"),
        ("violations", "many", "invalid violations 'many' (expected a list)"),
        ("counts", 3, "invalid counts 3 (expected an object of counts)"),
        ("final", "no", "invalid final 'no' (expected true or false)"),
    ],
)  # fmt: skip
def test_a_summary_with_a_key_of_the_wrong_type_exits_2_and_keeps_report_html(
    folder: Path, key: str, value: object, problem: str
) -> None:
    before = (folder / "report.html").read_bytes()
    edit_summary(folder, lambda s: s.update({key: value}))

    proc = report(folder)

    assert_refused(proc, folder, f"is not a run summary: {problem}; {RESTORE}")
    assert (folder / "report.html").read_bytes() == before


def interrupted(summary: dict[str, Any]) -> None:
    summary.update(verdict="interrupted", exit_code=130, final=False)


def distributed(summary: dict[str, Any]) -> dict[str, Any]:
    return merge_summaries(summary, {"gw0": summary, "gw1": summary}, lost=["gw2"])


@pytest.mark.parametrize(
    ("change", "verdict"),
    [(None, "PASS"), (interrupted, "INTERRUPTED"), (distributed, "ERROR")],
    ids=["as-written", "interrupted-not-final", "distributed-with-a-lost-worker"],
)
def test_a_summary_a_run_writes_is_rendered_over_the_old_page_with_exit_0(
    folder: Path, change: Callable[[dict[str, Any]], object] | None, verdict: str
) -> None:
    if change is not None:
        edit_summary(folder, change)
    (folder / "report.html").write_text("the old page")
    files = sorted(os.listdir(folder))

    proc = report(folder)

    assert proc.returncode == 0, output_of(proc)
    assert proc.stdout.splitlines() == [str(folder / "report.html")]
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert f'<div class="verdict">{verdict}</div>' in page
    assert sorted(os.listdir(folder)) == files
