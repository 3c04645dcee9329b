"""The HTML report: a self-contained page that shows every witness and escapes everything."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from harness.distributed import merge_summaries
from harness.errors import UsageError
from harness.reporting.charts import (
    Decimator,
    LatencyTracker,
    RateHistogram,
    Series,
    line_chart,
    percentile,
)
from harness.reporting.html import render_report

XSS = "<script>alert(1)</script>"

CROSS_FRAME = (
    '{"type": "agent_thinking", "message_id": "m-1", '
    '"data": {"thought": "canary-7f3a ' + XSS.replace('"', '\\"') + '"}}'
)
STATE_FRAME = '{"thread": "th-1", "owner": "user-1"}'

SUMMARY: dict[str, Any] = {
    "schema": "isoharness.summary/1",
    "verdict": "fail",
    "run": {
        "id": "20261124T153000Z-ab12cd",
        "seed": 1234,
        "started_at": "2026-11-24T15:30:00Z",
        "finished_at": "2026-11-24T15:30:41Z",
        "duration_s": 41.2,
        "command": "isoharness run --seed 1234",
        "policy": "owner_only",
        "sizes": {"users": 12, "tenants": 3, "connections_per_user": 2, "duration_s": 5},
    },
    "target": {"url": "http://127.0.0.1:4242", "embedded": True, "faults": ["singleton_emitter"]},
    "counts": {"users": 40, "connections": 80, "messages_sent": 300, "events_received": 1500},
    "coverage": {"overlapping_runs": 120, "reconnects": 0},
    "scenarios": [
        {
            "id": "scenarios/test_overlap.py::test_x[8]",
            "outcome": "failed",
            "duration_s": 2.1,
            "violations": 2,
            "coverage": {"overlapping_runs": 120},
        },
        {"id": "scenarios/test_probe.py::test_y", "outcome": "passed", "duration_s": 0.5},
    ],
    "violations": [
        {
            "kind": "cross_delivery",
            "scenario": "scenarios/test_overlap.py::test_x[8]",
            "victim": "t1/user-2",
            "owner": "t0/user-1",
            "crosses_tenant": True,
            "detail": "t1/user-2 received agent_thinking of m-1",
            "evidence": {
                "raw": CROSS_FRAME,
                "connection": "c17",
                "received_at": "2026-11-24T15:30:12.345Z",
                "received_mono": 12.3,
                "sent_at": "2026-11-24T15:30:12.100Z",
                "canary": "canary-7f3a",
                "field": "data.thought",
                "seed": 1234,
                "message_id": "m-1",
                "hops": ["edge-a", "worker-3"],
            },
        },
        {
            "kind": "shared_state",
            "scenario": "scenarios/test_overlap.py::test_x[8]",
            "victim": "t0/user-3",
            "owner": "t0/user-1",
            "crosses_tenant": False,
            "detail": "GET /threads/th-1 answered user-3 with user-1's thread",
            "evidence": {"raw": STATE_FRAME, "sent_at": None, "route": "/threads/th-1"},
        },
    ],
    "errors": [{"kind": "target_error", "detail": "HTTP 503 from /health", "count": 3}],
    "memory": {
        "status": "growth",
        "slope_bytes_per_session": 2048.0,
        "ci_low": 1024,
        "ci_high": 3072,
        "bytes_per_hour": 7340032,
        "projected_24h_bytes": 176160768,
        "detail": "grows 2 KiB per session",
        "intercept_bytes": 104857600,
        "warmup_sessions": 2,
    },
}

TIMELINE = """\
{"t": 1000.0, "elapsed_s": 0.0, "phase": "load", "idle": false, "values": {"memory_bytes": 104857600, "sessions": 0}, "errors": []}
{"t": 1001.0, "elapsed_s": 1.0, "phase": "load", "idle": false, "values": {"memory_bytes": 104867840, "sessions": 5}, "errors": []}
{"t": 1002.0, "elapsed_s": 2.0, "phase": "idle", "idle": true, "values": {"memory_bytes": 104878080, "sessions": 10}, "errors": []}
{"t": 1003.0, "elapsed_s": 3.0, "phase": "load", "idle": false, "values": {"memory_bytes": 104888320, "sessions": 15}, "errors": []}
"""  # noqa: E501

EVENTS = """\
{"k": "open", "t": 1000.0, "m": 0.0, "scenario": "s", "user": "t0/user-1", "conn": "c1"}
{"k": "sent", "t": 1000.5, "m": 0.5, "scenario": "s", "user": "t0/user-1", "conn": "c1", "message_id": "m-1", "thread_id": "th-1"}
{"k": "recv", "t": 1000.6, "m": 0.6, "scenario": "s", "user": "t0/user-1", "conn": "c1", "raw": "{\\"type\\": \\"agent_started\\", \\"message_id\\": \\"m-1\\"}"}
{"k": "recv", "t": 1000.7, "m": 0.7, "scenario": "s", "user": "t1/user-2", "conn": "c17", "raw": "{\\"type\\": \\"agent_thinking\\", \\"message_id\\": \\"m-1\\"}"}
{"k": "recv", "t": 1000.9, "m": 0.9, "scenario": "s", "user": "t0/user-1", "conn": "c1", "raw": "{\\"type\\": \\"agent_thinking\\", \\"message_id\\": \\"m-1\\"}"}
{"k": "recv", "t": 1001.7, "m": 1.7, "scenario": "s", "user": "t0/user-1", "conn": "c1", "raw": "{\\"type\\": \\"agent_completed\\", \\"message_id\\": \\"m-1\\"}"}
{"k": "recv", "t": 1002.5, "m": 2.5, "scenario": "s", "user": "t0/user-1", "conn": "c1", "raw": "{\\"type\\": \\"agent_completed\\", \\"message_id\\": \\"m-1\\"}"}
{"k": "close", "t": 1003.0, "m": 3.0, "scenario": "s", "user": "t0/user-1", "conn": "c1"}
"""  # noqa: E501


def make_run(
    folder: Path,
    *,
    summary: dict[str, Any] | str | None = None,
    timeline: str | None = TIMELINE,
    events: str | None = EVENTS,
) -> Path:
    """A report folder as a run writes it; ``None`` leaves a file out."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = SUMMARY if summary is None else summary
    text = summary if isinstance(summary, str) else json.dumps(summary)
    (folder / "summary.json").write_text(text, encoding="utf-8")
    if timeline is not None:
        (folder / "timeline.jsonl").write_text(timeline, encoding="utf-8")
    if events is not None:
        (folder / "events.jsonl").write_text(events, encoding="utf-8")
    return folder


class Page(HTMLParser):
    """The parts of a rendered report the tests look at."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.chunks: list[str] = []
        self.witnesses: list[str] = []
        self.classes: dict[str, list[str]] = {}
        self.links: list[tuple[str, str]] = []
        self.tags: set[str] = set()
        self._open: list[tuple[str, list[str], list[str]]] = []
        self.feed(html)
        self.close()

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        for name in ("src", "href", "xlink:href", "action", "srcset"):
            if values.get(name):
                self.links.append((name, values[name] or ""))
        if tag in ("meta", "br", "img", "link", "input", "hr"):
            return
        self._open.append((tag, (values.get("class") or "").split(), []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, classes, text = self._open.pop()
            joined = "".join(text)
            if self._open:
                self._open[-1][2].append(joined)
            for cls in classes:
                self.classes.setdefault(cls, []).append(joined)
            if name == "pre" and "witness" in classes:
                self.witnesses.append(joined)
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)
        if self._open:
            self._open[-1][2].append(data)

    def svgs(self) -> list[ET.Element]:
        return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", self.html, re.S)]


def render(folder: Path) -> Page:
    return Page(render_report(folder).read_text(encoding="utf-8"))


def chart_text(svg: ET.Element) -> str:
    return " ".join("".join(svg.itertext()).split())


# --- the witness -----------------------------------------------------------


def test_every_violation_is_shown_with_its_raw_frame_and_both_users(tmp_path: Path) -> None:
    page = render(make_run(tmp_path))

    assert page.witnesses == [CROSS_FRAME, STATE_FRAME]
    assert page.classes["victim"] == ["t1/user-2", "t0/user-3"]
    assert page.classes["owner"] == ["t0/user-1", "t0/user-1"]
    for violation in SUMMARY["violations"]:
        assert violation["kind"] in page.text
        assert violation["scenario"] in page.text
        assert violation["detail"] in page.text
    assert "crosses tenants" in page.text
    assert "same tenant" in page.text


def test_a_flood_of_violations_shows_200_witnesses_and_counts_the_rest(tmp_path: Path) -> None:
    one = SUMMARY["violations"][0]
    summary = dict(
        SUMMARY,
        violations=[dict(one, detail=f"leak {i}") for i in range(250)],
        violation_counts={"cross_delivery": 9000, "shared_state": 1000},
    )
    page = render(make_run(tmp_path, summary=summary))

    assert len(page.witnesses) == 200
    assert "10000 isolation violations" in page.text
    assert "and 9800 more violations" in page.text
    assert "leak 199" in page.text
    assert "leak 200" not in page.text


def test_every_evidence_key_is_shown(tmp_path: Path) -> None:
    page = render(make_run(tmp_path))

    shown = page.classes["evidence"]
    for violation, table in zip(SUMMARY["violations"], shown, strict=True):
        for key, value in violation["evidence"].items():
            if key == "raw":
                continue
            assert key in table
            rendered = value if isinstance(value, str) else json.dumps(value, indent=2)
            assert rendered in table
    assert "2026-11-24T15:30:12.345Z" in shown[0]
    assert '"worker-3"' in shown[0]


def test_a_script_in_a_frame_is_escaped(tmp_path: Path) -> None:
    summary = json.loads(json.dumps(SUMMARY))
    summary["violations"][0]["detail"] = f"detail {XSS}"
    summary["violations"][0]["victim"] = f"t1/{XSS}"
    summary["run"]["command"] = f"isoharness run {XSS}"
    summary["scenarios"][0]["id"] = f"scenarios/test_x.py::test[{XSS}]"
    events = EVENTS + json.dumps({"k": "recv", "m": 1.0, "user": XSS, "raw": XSS}) + "\n"

    html = render_report(make_run(tmp_path, summary=summary, events=events)).read_text()

    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert XSS in page.witnesses[0]
    assert f"t1/{XSS}" in page.classes["victim"]


# --- the verdict and the run ------------------------------------------------


@pytest.mark.parametrize("verdict", ["pass", "fail", "error", "inconclusive", "interrupted"])
def test_the_banner_shows_the_verdict(tmp_path: Path, verdict: str) -> None:
    page = render(make_run(tmp_path, summary={**SUMMARY, "verdict": verdict}))

    assert page.classes[verdict] == page.classes["banner"]
    assert page.classes["verdict"] == [verdict.upper()]


def test_a_pass_says_under_the_verdict_what_leak_rate_it_rules_out(tmp_path: Path) -> None:
    evidence = {"events_checked": 7719, "leak_rate_excluded_95": 3.8806e-4, "one_in": 2577}
    passed = {**SUMMARY, "verdict": "pass", "violations": [], "evidence": evidence}

    page = render(make_run(tmp_path / "pass", summary=passed))

    assert page.classes["strength"] == [
        "7,719 events checked; a leak hitting more than 1 in 2,577 events would have shown (95%)"
    ]
    banner = page.classes["banner"][0]
    assert banner.index("PASS") < banner.index("7,719 events checked")
    # Only a pass claims it; a summary written before the block existed renders as before.
    failed = render(make_run(tmp_path / "fail", summary={**SUMMARY, "evidence": evidence}))
    assert "strength" not in failed.classes
    old = render(make_run(tmp_path / "old", summary={**SUMMARY, "verdict": "pass"}))
    assert "strength" not in old.classes


def test_run_parameters_seed_target_counts_coverage_and_scenarios_are_shown(
    tmp_path: Path,
) -> None:
    page = render(make_run(tmp_path))

    for text in (
        "20261124T153000Z-ab12cd",
        "Seed 1234",
        "isoharness run --seed 1234",
        "owner_only",
        "http://127.0.0.1:4242",
        "singleton_emitter",
        "1,500 Events received",
        "Overlapping runs 120",
        "Reconnects not exercised 0",
        "scenarios/test_overlap.py::test_x[8] failed 2.1 s 2",
        "target_error HTTP 503 from /health 3",
        "2.00 KiB (CI 1.00 KiB … 3.00 KiB)",
    ):
        assert text in page.text


def test_a_summary_with_only_its_schema_and_verdict_still_renders(tmp_path: Path) -> None:
    # What an interrupted run may leave: the page shows what exists.
    summary = {"schema": "isoharness.summary/1", "verdict": "interrupted", "final": False}

    page = render(make_run(tmp_path, summary=summary, timeline=None, events=None))

    assert page.classes["verdict"] == ["INTERRUPTED"]
    assert "No violations recorded." in page.text
    assert len(page.svgs()) == 3


def test_a_distributed_summary_with_a_lost_worker_renders(tmp_path: Path) -> None:
    worker = {**SUMMARY, "verdict": "pass", "exit_code": 0, "final": True}
    summary = merge_summaries({**SUMMARY, "final": True}, {"gw0": worker}, lost=["gw1"])

    page = render(make_run(tmp_path, summary=summary))

    assert page.classes["verdict"] == ["ERROR"]
    assert "gw0 pass (events: gw0/events.jsonl) · gw1 lost" in page.text
    assert "gw1 went down without a summary" in page.text


FIX = "restore the summary.json the run wrote, or run again"


def json_error(text: str) -> str:
    """What the JSON parser says about ``text``."""
    with pytest.raises(orjson.JSONDecodeError) as excinfo:
        orjson.loads(text)
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("summary", "problem"),
    [
        ("{not json", f"not valid JSON ({json_error('{not json')})"),
        ("[1, 2]", "a JSON array, not an object"),
        ({**SUMMARY, "verdict": "PASSED"}, "invalid verdict 'PASSED' (expected one of "
         "pass, fail, error, inconclusive, interrupted)"),
        ({**SUMMARY, "exit_code": "zero"}, "invalid exit_code 'zero' (expected an integer)"),
        ({**SUMMARY, "exit_code": False}, "invalid exit_code false (expected an integer)"),
        ({**SUMMARY, "final": "yes"}, "invalid final 'yes' (expected true or false)"),
        ({**SUMMARY, "run": [1]}, "invalid run [1] (expected an object)"),
        ({**SUMMARY, "counts": {"users": "40"}},
         "invalid counts['users'] '40' (expected an integer)"),
        ({**SUMMARY, "violations": "many"}, "invalid violations 'many' (expected a list)"),
        ({**SUMMARY, "evidence": 7719}, "invalid evidence 7719 (expected an object)"),
        ({**SUMMARY, "evidence": {"events_checked": "7719"}},
         "invalid evidence['events_checked'] '7719' (expected an integer)"),
        ({**SUMMARY, "evidence": {"one_in": 2577.5}},
         "invalid evidence['one_in'] 2577.5 (expected an integer)"),
        ({**SUMMARY, "evidence": {"leak_rate_excluded_95": "low"}},
         "invalid evidence['leak_rate_excluded_95'] 'low' (expected a number)"),
        ({**SUMMARY, "violations": [*SUMMARY["violations"], "x" * 80]},
         f"invalid violations[2] '{'x' * 58}… (expected an object)"),
    ],
)  # fmt: skip
def test_a_summary_the_harness_could_not_have_written_is_refused_naming_the_file(
    tmp_path: Path, summary: dict[str, Any] | str, problem: str
) -> None:
    folder = make_run(tmp_path, summary=summary)

    with pytest.raises(UsageError) as excinfo:
        render_report(folder)

    assert str(excinfo.value) == f"{folder / 'summary.json'} is not a run summary: {problem}; {FIX}"
    assert "report.html" not in {p.name for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("schema", "problem"),
    [({"schema": "other/9"}, "schema 'other/9'"), ({}, "no schema")],
)
def test_a_summary_of_another_schema_is_refused(
    tmp_path: Path, schema: dict[str, str], problem: str
) -> None:
    summary = {k: v for k, v in SUMMARY.items() if k != "schema"} | schema
    folder = make_run(tmp_path, summary=summary)

    with pytest.raises(UsageError) as excinfo:
        render_report(folder)

    assert str(excinfo.value) == (
        f"{folder / 'summary.json'} is not a run summary: {problem} "
        "(expected 'isoharness.summary/1'); render it with the isoharness version that wrote it"
    )


def test_a_refused_summary_leaves_the_existing_page_as_it_was(tmp_path: Path) -> None:
    folder = make_run(tmp_path)
    before = render_report(folder).read_bytes()
    summary = (folder / "summary.json").read_bytes()
    (folder / "summary.json").write_bytes(summary[: len(summary) // 2])

    with pytest.raises(UsageError):
        render_report(folder)

    assert (folder / "report.html").read_bytes() == before


def test_a_page_that_cannot_be_written_in_full_leaves_the_old_one_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_run(tmp_path)
    (folder / "report.html").write_text("the old page")

    def refused(src: object, dst: object) -> None:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr("harness.reporting.html.os.replace", refused)
    with pytest.raises(OSError, match="Device or resource busy"):
        render_report(folder)

    assert (folder / "report.html").read_text() == "the old page"
    assert sorted(p.name for p in folder.iterdir()) == [
        "events.jsonl",
        "report.html",
        "summary.json",
        "timeline.jsonl",
    ]


# --- the charts ---------------------------------------------------------------


def test_three_charts_are_drawn_from_the_data(tmp_path: Path) -> None:
    memory, rate, latency = render(make_run(tmp_path)).svgs()

    assert "Target memory over time" in chart_text(memory)
    assert "(MiB)" in chart_text(memory)
    assert "(s)" in chart_text(memory)
    lines = {p.get("data-series"): p for p in memory.iter("polyline")}
    assert len(lines["target memory"].get("points", "").split()) == 4
    assert len(lines["fitted trend (baseline + slope × sessions)"].get("points", "").split()) == 4
    assert [c.get("data-series") for c in memory.iter("circle") if c.get("class")] == [
        "idle sample"
    ]

    assert "Events received per second" in chart_text(rate)
    assert "(events/s)" in chart_text(rate)
    assert len(list(rate.iter("polyline"))) == 1

    assert "(ms)" in chart_text(latency)
    assert {p.get("data-series") for p in latency.iter("polyline")} == {"p50", "p90", "p99"}
    markers = [c for c in latency.iter("circle") if c.get("class") == "marker"]
    assert len(markers) == 3 * 3  # three percentiles of three event types
    for svg in (memory, rate, latency):
        assert svg.find("title") is not None
        assert not [t for t in svg.iter("text") if t.get("class") == "no-data"]


def test_latency_is_measured_to_the_first_receipt_by_the_sender(tmp_path: Path) -> None:
    page = render(make_run(tmp_path))

    # m-1 was sent at 0.5 s; c17 belongs to another user and the second
    # agent_completed is a repeat, so neither is timed.
    assert "agent_started 1 100 ms 100 ms 100 ms 100 ms" in page.text
    assert "agent_thinking 1 400 ms 400 ms 400 ms 400 ms" in page.text
    assert "agent_completed 1 1,200 ms" in page.text


def test_frames_that_arrived_in_one_read_are_each_timed_at_that_read(tmp_path: Path) -> None:
    frames = [
        json.dumps({"type": kind, "message_id": "m-1"})
        for kind in ("agent_started", "agent_thinking")
    ]
    read = {"k": "recv", "t": 1000.6, "m": 0.6, "user": "t0/user-1", "conn": "c1", "raws": frames}
    events = EVENTS.splitlines(keepends=True)
    page = render(make_run(tmp_path, events=events[1] + json.dumps(read) + "\n"))

    assert "agent_started 1 100 ms" in page.text
    assert "agent_thinking 1 100 ms" in page.text


def test_charts_say_no_data_when_timeline_and_events_are_missing(tmp_path: Path) -> None:
    page = render(make_run(tmp_path, timeline=None, events=None))

    svgs = page.svgs()
    assert len(svgs) == 3
    notes = [t.text or "" for svg in svgs for t in svg.iter("text") if t.get("class") == "no-data"]
    assert notes == [
        "No data: timeline.jsonl not found",
        "No data: events.jsonl not found",
        "No data: events.jsonl not found",
    ]
    assert not [p for svg in svgs for p in svg.iter("polyline")]
    assert page.classes["missing"] == ["missing", "missing"]


def test_charts_say_no_data_when_files_hold_nothing_usable(tmp_path: Path) -> None:
    timeline = '{"t": 1.0, "values": {"sessions": 3}}\n'
    events = '{"k": "sent", "m": 0.1, "user": "t0/u", "conn": "c1", "message_id": "m"}\n'

    svgs = render(make_run(tmp_path, timeline=timeline, events=events)).svgs()

    notes = [t.text or "" for svg in svgs for t in svg.iter("text") if t.get("class") == "no-data"]
    assert notes == [
        "No data: no memory samples in timeline.jsonl",
        "No data: no received frames",
        "No data: no received event could be matched to its sent message",
    ]


def test_malformed_lines_and_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    timeline = TIMELINE + "{not json\n[1, 2]\n\n" + '{"elapsed_s": 9, "values": []}\n'
    events = (
        "garbage\n"
        + EVENTS
        + '{"k": "recv", "m": 4.0, "user": "t0/user-1", "conn": "c1", "raw": "<not json>"}\n'
        + '{"k": "recv", "user": "t0/user-1", "raw": "{}"}\n'
        + '{"k": "sent", "m": 1.0}\n'
        + '{"k": "recv", "t": 1000.9, "m": 0.9, "raw": "{\\"type\\": \\"agent_sta'
    )

    page = render(make_run(tmp_path, timeline=timeline, events=events))

    assert page.classes["skipped-count"] == ["0", "2", "4"]
    assert "1 received frame not JSON objects (not timed)" in page.text
    memory, rate, latency = page.svgs()
    assert len(list(memory.iter("polyline"))) == 2
    assert len(list(rate.iter("polyline"))) == 1
    assert len(list(latency.iter("polyline"))) == 3


def test_a_long_run_is_drawn_with_at_most_1000_points(tmp_path: Path) -> None:
    timeline = "".join(
        json.dumps({"elapsed_s": i, "idle": i % 2 == 0, "values": {"memory_bytes": 1e8 + i}}) + "\n"
        for i in range(5000)
    )
    events = "".join(json.dumps({"k": "recv", "m": i / 2, "raw": "{}"}) + "\n" for i in range(6000))

    memory, rate, _ = render(make_run(tmp_path, timeline=timeline, events=events)).svgs()

    for svg in (memory, rate):
        for line in svg.iter("polyline"):
            assert 2 <= len(line.get("points", "").split()) <= 1000
    assert len([c for c in memory.iter("circle") if c.get("class") == "marker"]) <= 1000


# --- self-containment ---------------------------------------------------------


def test_the_page_references_nothing_outside_itself(tmp_path: Path) -> None:
    page = render(make_run(tmp_path))

    assert [href for _, href in page.links if not href.startswith("#")] == []
    assert not {"script", "link", "img", "iframe", "object", "embed"} & page.tags
    assert not re.search(r"url\(|@import", page.html)


# --- the API ------------------------------------------------------------------


def test_out_name_names_the_file_written(tmp_path: Path) -> None:
    out = render_report(make_run(tmp_path), out_name="page.html")

    assert out == tmp_path / "page.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "page.html",
        "summary.json",
        "timeline.jsonl",
    ]


def test_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as excinfo:
        render_report(tmp_path / "nope")

    assert str(excinfo.value) == (
        f"report folder {str(tmp_path / 'nope')!r} does not exist; "
        "pass the folder a run wrote (the one holding summary.json)"
    )


def test_out_name_must_be_a_bare_file_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as excinfo:
        render_report(make_run(tmp_path), out_name="../report.html")

    assert str(excinfo.value) == (
        "out_name '../report.html' is not a file name; pass a bare name such as 'report.html'"
    )


# --- the accumulators ---------------------------------------------------------


def test_decimator_keeps_a_bounded_uniform_sample_ending_with_the_last_item() -> None:
    decimator: Decimator[int] = Decimator(100)
    for i in range(10_007):
        decimator.add(i)

    items = decimator.items()
    assert len(items) <= 100
    assert items[0] == 0
    assert items[-1] == 10_006
    assert items == sorted(items)
    assert decimator.seen == 10_007


def test_rate_histogram_widens_bins_and_keeps_every_event() -> None:
    histogram = RateHistogram(max_bins=100)
    for i in range(1000):
        histogram.add(i * 0.5)  # 2 events/s for 500 s
    assert not histogram.add(-1.0)
    assert not histogram.add(float("nan"))

    rates = histogram.rates()
    assert len(rates) <= 100
    assert histogram.bin_width_s == 8.0
    assert histogram.total == 1000
    # The last bin, [496, 504), holds only 3.5 s of events: dropped, not drawn as a dip.
    assert rates[-1][0] == 488.0
    assert {rate for _, rate in rates} == {2.0}


def test_latency_percentiles_match_numpy_and_the_reservoir_is_bounded() -> None:
    tracker = LatencyTracker(reservoir_size=50, seed=7)
    latencies = [(i * 37 % 101) / 1000 for i in range(40)]
    for i, latency in enumerate(latencies):
        tracker.sent(f"m{i}", 10.0, user="t0/u", conn="c1")
        assert tracker.received(f"m{i}", "agent_started", 10.0 + latency, user="t0/u", conn="c2")
        assert not tracker.received(f"m{i}", "agent_started", 11.0, user="t0/u", conn="c1")
        assert not tracker.received(f"m{i}", "agent_thinking", 10.0, user="t1/v", conn="c9")

    (row,) = tracker.rows()
    ms = np.array(latencies) * 1000
    assert row.count == row.sampled == 40
    assert row.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert row.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert row.max_ms == pytest.approx(ms.max())

    for i in range(40, 200):
        tracker.sent(f"m{i}", 0.0, user=None, conn=None)
        tracker.received(f"m{i}", "agent_started", 0.001, user=None, conn=None)
    (row,) = tracker.rows()
    assert (row.count, row.sampled) == (200, 50)


def test_latency_tracker_forgets_the_oldest_sends_first() -> None:
    tracker = LatencyTracker(max_pending=2)
    for i in range(3):
        tracker.sent(f"m{i}", 0.0, user="u", conn="c")

    assert not tracker.received("m0", "agent_started", 1.0, user="u", conn="c")
    assert tracker.received("m2", "agent_started", 1.0, user="u", conn="c")
    assert tracker.unmatched == 1


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="the percentile of no values is undefined"):
        percentile([], 50)


def test_chart_text_is_escaped_and_the_svg_is_well_formed() -> None:
    svg = line_chart(
        title=f"t {XSS}",
        x_label="x (s)",
        y_label="y & z (ms)",
        series=[Series(XSS, [(0.0, 1.0), (1.0, float("inf")), (2.0, 3.0)], "#000")],
        empty_note="none",
    )

    assert "<script" not in svg
    root = ET.fromstring(str(svg))
    assert root.findtext("title") == f"t {XSS}"
    (line,) = root.iter("polyline")
    assert len(line.get("points", "").split()) == 2
