"""Render a run's report folder as one self-contained HTML page.

:func:`render_report` reads ``summary.json``, ``timeline.jsonl`` and
``events.jsonl`` from the folder a run wrote and writes ``report.html`` next
to them: verdict banner (with the leak rate a PASS rules out), run parameters
and seed, target, counts, condition coverage, scenarios, every violation with its
full witness, errors, and three inline-SVG charts (target memory, events per
second, event latency percentiles). The page has no scripts and no external references, so it opens
offline; every value that came from the target or the run is HTML-escaped
(the template autoescapes, and charts escape their own text).

``summary.json`` holds the verdict, so a file that is not one is refused
(:class:`~harness.errors.UsageError`) rather than drawn as a page that says
nothing was found: it must be a JSON object of schema ``isoharness.summary/1``
with a known verdict, and the keys the page reads must have the types the
harness writes. Any other key may be missing: the page shows what exists. The
JSONL files are streamed line by line with bounded memory (a soak writes
millions of lines); lines that are not JSON objects, records missing their
required fields and frames that are not JSON are skipped and counted in the
page's "Input data" section, never fatal.

``report.html`` is replaced only by a page rendered in full: an existing one is
the evidence of a run, and a failed render must leave it as it was.
"""

from __future__ import annotations

import functools
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup

from harness.errors import UsageError
from harness.recording import received_frames
from harness.reporting.charts import (
    Decimator,
    LatencyRow,
    LatencyTracker,
    RateHistogram,
    Series,
    line_chart,
)
from harness.reporting.terminal import evidence_sentence
from harness.run import SCHEMA as SUMMARY_SCHEMA
from harness.types import Verdict

__all__ = ["render_report"]

MAX_CHART_POINTS = 1000
_MIB = 1024.0 * 1024.0
_MAX_KINDS = 20

MAX_WITNESSES = 200
"""Violations shown with their full witness; the rest are counted (all are in summary.json)."""

_VERDICT_HEADLINES = {
    "pass": "No isolation violations found",
    "fail": "Isolation violations found",
    "error": "The run could not complete: a harness or target error",
    "inconclusive": "Inconclusive: the run did not exercise enough to decide",
    "interrupted": "Interrupted before the run finished",
}
_RUN_KEYS = ("id", "seed", "started_at", "finished_at", "duration_s", "command", "policy", "sizes")
_RUN_LABELS = {
    "id": "Run id",
    "duration_s": "Duration",
    "started_at": "Started",
    "finished_at": "Finished",
}
_TARGET_KEYS = ("url", "adapter", "embedded", "faults")
_TARGET_LABELS = {"url": "URL", "faults": "Injected faults"}
_COUNT_LABELS = {"http_probes": "HTTP probes"}
_VIOLATION_KEYS = ("kind", "scenario", "victim", "owner", "crosses_tenant", "detail", "evidence")
_EVIDENCE_ORDER = (
    "connection",
    "received_at",
    "received_mono",
    "sent_at",
    "message_id",
    "canary",
    "field",
    "seed",
)
_MEMORY_KEYS = (
    "slope_bytes_per_session",
    "ci_low",
    "ci_high",
    "bytes_per_hour",
    "projected_24h_bytes",
    "intercept_bytes",
    "warmup_sessions",
)


def render_report(report_dir: Path, *, out_name: str = "report.html") -> Path:
    """Write the HTML report of the run whose outputs are in ``report_dir``.

    Args:
        report_dir: the run's report folder; ``summary.json``,
            ``timeline.jsonl`` and ``events.jsonl`` are read when present
            (a missing file, or a line of a JSONL file that is not a record,
            is noted on the page).
        out_name: the file name to write inside ``report_dir``; an existing
            file is replaced atomically.

    Returns:
        the path of the written file.

    Raises:
        UsageError: ``report_dir`` is not a directory, ``out_name`` is not a
            plain file name, or ``summary.json`` is there but is not a run's
            summary (not JSON, not an object, another schema, a key of the
            wrong type); the message names the file, what is wrong and the fix.
            Nothing is written.
        OSError: an input could not be read or the page could not be written;
            an existing page is left as it was.
    """
    if not report_dir.is_dir():
        raise UsageError(
            f"report folder {str(report_dir)!r} does not exist; "
            "pass the folder a run wrote (the one holding summary.json)"
        )
    if not out_name or Path(out_name).name != out_name or out_name in (".", ".."):
        raise UsageError(
            f"out_name {out_name!r} is not a file name; pass a bare name such as 'report.html'"
        )
    summary, summary_input = _read_summary(report_dir / "summary.json")
    timeline = _read_timeline(report_dir / "timeline.jsonl")
    # Seed the latency reservoir from the run, so a report re-renders identically.
    seed = _mapping(summary.get("run")).get("seed")
    # A distributed run: each worker recorded its own users' events in its folder.
    workers = [_text(w.get("id")) for w in _sequence(summary.get("workers")) if isinstance(w, dict)]
    paths = [report_dir / w / "events.jsonl" for w in workers if w.isalnum()]
    events = _read_events(
        paths or [report_dir / "events.jsonl"], seed=seed if isinstance(seed, int) else 0
    )
    context = _context(summary, summary_input, timeline, events)
    page = _environment().get_template("report.html.j2").render(context)

    out = report_dir / out_name
    # The old page is replaced only by a whole new one: written next to it, synced, renamed.
    partial = report_dir / f".{out_name}.{os.getpid()}.partial"
    try:
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(page)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("harness.reporting", "templates"),
        autoescape=True,  # frames are attacker-controlled text: AEP/1 payloads may hold markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --------------------------------------------------------------------------
# Reading the inputs


@dataclass(slots=True)
class InputFile:
    """What reading one input file found, for the page's "Input data" section."""

    name: str
    present: bool = False
    records: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Timeline:
    input: InputFile
    # (elapsed s, memory bytes, sessions or None)
    memory: list[tuple[float, float, float | None]]
    idle: list[tuple[float, float]]


@dataclass(slots=True)
class _Events:
    input: InputFile
    rates: list[tuple[float, float]]
    bin_width_s: float
    received: int
    latency: list[LatencyRow]


def _read_summary(path: Path) -> tuple[dict[str, Any], InputFile]:
    info = InputFile(path.name)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        info.notes.append("not found: the run wrote no summary")
        return {}, info
    except orjson.JSONDecodeError as exc:
        raise _not_a_summary(path, f"not valid JSON ({exc})") from exc
    info.present = True
    info.records = 1
    _check_summary(path, data)
    return data, info


_RESTORE = "restore the summary.json the run wrote, or run again"
_VERDICTS = tuple(v.value for v in Verdict)
_OBJECTS = ("run", "target", "memory")
_COUNTERS = ("counts", "coverage", "probes", "violation_counts")
_LISTS = ("violations", "errors", "scenarios", "workers")


def _not_a_summary(path: Path, problem: str, fix: str = _RESTORE) -> UsageError:
    return UsageError(f"{path} is not a run summary: {problem}; {fix}")


def _check_summary(path: Path, data: object) -> None:
    """Refuse a ``summary.json`` the harness could not have written.

    Checks what the page is drawn from (the schema, the verdict, the types
    of the top-level keys, and the numbers of the optional ``evidence`` block the
    banner's sentence is made of) and nothing deeper: values inside the records are
    shown as they are. Every summary :mod:`harness.run`, the session and
    :func:`harness.distributed.merge_summaries` write passes, final or not, and so
    does one written before the ``evidence`` block existed.
    """
    if not isinstance(data, dict):
        raise _not_a_summary(path, f"a JSON {_json_type(data)}, not an object")
    schema = data.get("schema")
    if schema != SUMMARY_SCHEMA:
        problem = f"schema {_shown(schema)}" if "schema" in data else "no schema"
        raise _not_a_summary(
            path,
            f"{problem} (expected {SUMMARY_SCHEMA!r})",
            "render it with the isoharness version that wrote it",
        )
    verdict = data.get("verdict")
    if not isinstance(verdict, str) or verdict not in _VERDICTS:
        problem = f"invalid verdict {_shown(verdict)}" if "verdict" in data else "no verdict"
        raise _not_a_summary(path, f"{problem} (expected one of {', '.join(_VERDICTS)})")

    def expect(key: str, value: object, ok: bool, expected: str) -> None:
        if not ok:
            raise _not_a_summary(path, f"invalid {key} {_shown(value)} (expected {expected})")

    if "exit_code" in data:
        expect("exit_code", data["exit_code"], _is_int(data["exit_code"]), "an integer")
    if "final" in data:
        expect("final", data["final"], isinstance(data["final"], bool), "true or false")
    for key in _OBJECTS:
        if key in data:
            expect(key, data[key], isinstance(data[key], dict), "an object")
    for key in _COUNTERS:
        if key in data:
            expect(key, data[key], isinstance(data[key], dict), "an object of counts")
            for name, count in data[key].items():
                expect(f"{key}[{name!r}]", count, _is_int(count), "an integer")
    for key in _LISTS:
        if key in data:
            expect(key, data[key], isinstance(data[key], list), "a list")
            for index, item in enumerate(data[key]):
                expect(f"{key}[{index}]", item, isinstance(item, dict), "an object")
    if "evidence" in data:
        # Optional: summaries written before the block existed have none.
        evidence = data["evidence"]
        expect("evidence", evidence, isinstance(evidence, dict), "an object")
        for name in ("events_checked", "one_in"):
            if name in evidence:
                value = evidence[name]
                expect(f"evidence[{name!r}]", value, _is_int(value), "an integer")
        if "leak_rate_excluded_95" in evidence:
            value = evidence["leak_rate_excluded_95"]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            expect("evidence['leak_rate_excluded_95']", value, ok, "a number")


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else _json_compact(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_compact(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def _json_lines(path: Path, info: InputFile) -> Iterator[dict[str, Any]]:
    """Yield each line of ``path`` that is a JSON object; count the others in ``info``."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        info.notes.append("not found")
        return
    info.present = True
    with handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                info.skipped += 1
                continue
            if not isinstance(record, dict):
                info.skipped += 1
                continue
            info.records += 1
            yield record


def _read_timeline(path: Path) -> _Timeline:
    info = InputFile(path.name)
    memory: Decimator[tuple[float, float, float | None]] = Decimator(MAX_CHART_POINTS)
    idle: Decimator[tuple[float, float]] = Decimator(MAX_CHART_POINTS)
    first_t: float | None = None
    for record in _json_lines(path, info):
        t = _num(record.get("t"))
        if first_t is None:
            first_t = t
        elapsed = _num(record.get("elapsed_s"))
        if elapsed is None and t is not None and first_t is not None:
            elapsed = t - first_t
        values = _mapping(record.get("values"))
        mem = _num(values.get("memory_bytes"))
        if elapsed is None or mem is None:
            continue
        memory.add((elapsed, mem, _num(values.get("sessions"))))
        if record.get("idle") is True:
            idle.add((elapsed, mem))
    if info.present and memory.seen == 0:
        info.notes.append("no sample has values.memory_bytes")
    elif memory.seen > MAX_CHART_POINTS:
        info.notes.append(f"{memory.seen:,} memory samples drawn as {MAX_CHART_POINTS:,} points")
    return _Timeline(info, memory.items(), idle.items())


def _read_events(paths: Sequence[Path], *, seed: int) -> _Events:
    info = InputFile(
        paths[0].name if len(paths) == 1 else ", ".join(f"{p.parent.name}/{p.name}" for p in paths)
    )
    rates = RateHistogram(MAX_CHART_POINTS)
    latency = LatencyTracker(seed=seed)
    kinds: Counter[str] = Counter()
    bad_frames = 0
    for record in (r for path in paths for r in _json_lines(path, info)):
        kind = record.get("k")
        kind = kind if isinstance(kind, str) else "(none)"
        kinds[kind if kind in kinds or len(kinds) < _MAX_KINDS else "(other)"] += 1
        m = _num(record.get("m"))
        user, conn = _str_or_none(record.get("user")), _str_or_none(record.get("conn"))
        if kind == "sent":
            message_id = record.get("message_id")
            if m is None or not isinstance(message_id, str):
                info.skipped += 1
                continue
            latency.sent(message_id, m, user=user, conn=conn)
        elif kind == "recv":
            raws = received_frames(record)
            if m is None or not raws:
                info.skipped += 1
                continue
            for raw in raws:  # frames of one read: received at the same moment
                if not rates.add(m):
                    info.skipped += 1
                    continue
                frame = _frame(raw)
                if frame is None:
                    bad_frames += 1
                    continue
                event_type, message_id = frame.get("type"), frame.get("message_id")
                if isinstance(event_type, str) and isinstance(message_id, str):
                    latency.received(message_id, event_type, m, user=user, conn=conn)
    if kinds:
        info.notes.append("records: " + ", ".join(f"{k} {n:,}" for k, n in kinds.most_common()))
    if bad_frames:
        info.notes.append(f"{_plural(bad_frames, 'received frame')} not JSON objects (not timed)")
    if latency.unmatched:
        info.notes.append(
            f"{_plural(latency.unmatched, 'frame')} naming a message with no recorded send"
            " (not timed)"
        )
    if rates.bin_width_s > 1:
        info.notes.append(f"events per second averaged over {rates.bin_width_s:g} s bins")
    return _Events(info, rates.rates(), rates.bin_width_s, rates.total, latency.rows())


def _frame(raw: object) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str | bytes):
        return None
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return frame if isinstance(frame, dict) else None


# --------------------------------------------------------------------------
# The page's view model: every value pre-formatted as text


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled value; ``mono`` asks for a monospace cell."""

    label: str
    value: str
    mono: bool = False


@dataclass(frozen=True, slots=True)
class Coverage:
    label: str
    value: str
    exercised: bool


@dataclass(frozen=True, slots=True)
class ScenarioView:
    id: str
    outcome: str
    outcome_class: str
    duration: str
    violations: str
    has_violations: bool
    coverage: str


@dataclass(frozen=True, slots=True)
class ViolationView:
    number: int
    kind: str
    scenario: str
    victim: str
    owner: str
    crosses_tenant: bool | None
    detail: str
    raw: str | None
    evidence: list[Row]
    extra: list[Row]


@dataclass(frozen=True, slots=True)
class ErrorView:
    kind: str
    detail: str
    count: str
    extra: list[Row]


def _context(
    summary: dict[str, Any], summary_input: InputFile, timeline: _Timeline, events: _Events
) -> dict[str, Any]:
    run, target = _mapping(summary.get("run")), _mapping(summary.get("target"))
    verdict = summary.get("verdict")
    verdict_text = str(verdict).lower() if isinstance(verdict, str) and verdict else "unknown"
    violations = [_violation(i, v) for i, v in enumerate(_sequence(summary.get("violations")), 1)]
    counted = {
        str(k): int(n) for k, n in _mapping(summary.get("violation_counts")).items() if _num(n)
    }
    total = sum(counted.values()) if counted else len(violations)
    headline = _VERDICT_HEADLINES.get(verdict_text, "No verdict recorded")
    if verdict_text == "fail" and total:
        headline = f"{total} isolation violation{'s' if total != 1 else ''}"
    by_kind = Counter(counted) if counted else Counter(v.kind for v in violations)
    crossing = Counter(v.kind for v in violations if v.crosses_tenant)
    memory = _mapping(summary.get("memory"))
    facts = [
        Row("Run", _text(run.get("id")), mono=True),
        Row("Seed", _identifier(run.get("seed")), mono=True),
        Row("Target", _text(target.get("url")), mono=True),
        Row("Duration", _seconds(run.get("duration_s"))),
        Row(
            "Workers",
            " · ".join(
                f"{_text(w.get('id'))} {_text(w.get('verdict'), 'lost')}"
                + (f" (events: {_text(w.get('events'))})" if w.get("events") else "")
                for w in _sequence(summary.get("workers"))
                if isinstance(w, dict)
            )
            or "—",
        ),
    ]
    return {
        "title": f"isoharness report {_text(run.get('id'), '')}".strip(),
        "verdict": verdict_text,
        "verdict_class": verdict_text if verdict_text in _VERDICT_HEADLINES else "unknown",
        "headline": headline,
        "evidence": evidence_sentence(summary),
        "facts": [f for f in facts if f.value != "—"],
        "command": _text(run.get("command"), ""),
        "run": _rows(run, _RUN_KEYS, _RUN_LABELS, mono={"id", "seed", "command"}),
        "target": _rows(target, _TARGET_KEYS, _TARGET_LABELS, mono={"url"}),
        "counts": _rows(_mapping(summary.get("counts")), (), _COUNT_LABELS),
        "coverage": [
            Coverage(_label(k), _text(v), _num(v) != 0)
            for k, v in _mapping(summary.get("coverage")).items()
        ],
        "scenarios": [_scenario(s) for s in _sequence(summary.get("scenarios"))],
        "violations": violations[:MAX_WITNESSES],
        "violations_total": total,
        "violations_hidden": total - min(len(violations), MAX_WITNESSES),
        "violation_kinds": [(k, n, crossing[k]) for k, n in by_kind.most_common()],
        "errors": [_error(e) for e in _sequence(summary.get("errors"))],
        "memory_status": _text(memory.get("status"), ""),
        "memory_detail": _text(memory.get("detail"), ""),
        "memory": _memory_rows(memory),
        "memory_chart": _memory_chart(timeline, memory),
        "rate_chart": _rate_chart(events),
        "latency_chart": _latency_chart(events),
        "latency": [
            (
                r.event_type,
                f"{r.count:,}",
                _ms(r.p50_ms),
                _ms(r.p90_ms),
                _ms(r.p99_ms),
                _ms(r.max_ms),
            )
            for r in events.latency
        ],
        "latency_sampled": any(r.sampled < r.count for r in events.latency),
        "inputs": [summary_input, timeline.input, events.input],
        "schema": _text(summary.get("schema"), SUMMARY_SCHEMA),
    }


def _violation(number: int, raw: dict[str, Any]) -> ViolationView:
    evidence = _mapping(raw.get("evidence"))
    frame = evidence.get("raw")
    keys = [k for k in _EVIDENCE_ORDER if k in evidence]
    keys += [k for k in evidence if k not in keys and k != "raw"]
    crosses = raw.get("crosses_tenant")
    return ViolationView(
        number=number,
        kind=_text(raw.get("kind"), "unknown"),
        scenario=_text(raw.get("scenario")),
        victim=_text(raw.get("victim")),
        owner=_text(raw.get("owner")),
        crosses_tenant=crosses if isinstance(crosses, bool) else None,
        detail=_text(raw.get("detail"), ""),
        raw=None if frame is None else frame if isinstance(frame, str) else _json(frame),
        evidence=[Row(k, _evidence_value(evidence[k]), mono=True) for k in keys],
        extra=[
            Row(k, _evidence_value(v), mono=True)
            for k, v in raw.items()
            if k not in _VIOLATION_KEYS
        ],
    )


def _scenario(raw: dict[str, Any]) -> ScenarioView:
    outcome = _text(raw.get("outcome"))
    violations = raw.get("violations")
    count = _num(violations)
    coverage = _mapping(raw.get("coverage"))
    return ScenarioView(
        id=_text(raw.get("id")),
        outcome=outcome,
        outcome_class=outcome if outcome in ("passed", "failed", "error", "skipped") else "other",
        duration=_seconds(raw.get("duration_s")),
        violations=_text(violations),
        has_violations=count is not None and count > 0,
        coverage=_text(coverage, ""),
    )


def _error(raw: dict[str, Any]) -> ErrorView:
    known = ("kind", "detail", "count")
    return ErrorView(
        kind=_text(raw.get("kind"), "error"),
        detail=_text(raw.get("detail"), ""),
        count=_text(raw.get("count"), "1"),
        extra=[Row(k, _evidence_value(v), mono=True) for k, v in raw.items() if k not in known],
    )


def _memory_rows(memory: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    slope = _num(memory.get("slope_bytes_per_session"))
    if slope is not None:
        low, high = _num(memory.get("ci_low")), _num(memory.get("ci_high"))
        ci = f" (CI {_bytes(low)} … {_bytes(high)})" if low is not None and high is not None else ""
        rows.append(Row("Growth per session", f"{_bytes(slope)}{ci}"))
    for key, label in (
        ("bytes_per_hour", "Growth per hour"),
        ("projected_24h_bytes", "Projected over 24 h"),
        ("intercept_bytes", "Fitted baseline"),
    ):
        value = _num(memory.get(key))
        if value is not None:
            rows.append(Row(label, _bytes(value)))
    if "warmup_sessions" in memory:
        rows.append(Row("Warm-up sessions excluded", _text(memory["warmup_sessions"])))
    known = {*_MEMORY_KEYS, "status", "detail"}
    rows += [Row(_label(k), _text(v)) for k, v in memory.items() if k not in known]
    return rows


# --------------------------------------------------------------------------
# Charts


def _memory_chart(timeline: _Timeline, memory: Mapping[str, Any]) -> Markup:
    # Idle samples first, so the memory line and the trend stay visible over dense markers.
    idle = [(t, b / _MIB) for t, b in timeline.idle]
    radius = 4.0 if len(idle) <= 100 else 2.0
    series = [
        Series("idle sample", idle, "#16a34a", line=False, marker_radius=radius),
        Series("target memory", [(t, b / _MIB) for t, b, _ in timeline.memory], "#2563eb"),
    ]
    slope, intercept = (
        _num(memory.get("slope_bytes_per_session")),
        _num(memory.get("intercept_bytes")),
    )
    if slope is not None and intercept is not None:
        # The fit is memory = intercept + slope × sessions; each sample's sessions maps it to time.
        trend = [
            (t, (intercept + slope * s) / _MIB) for t, _, s in timeline.memory if s is not None
        ]
        label = "fitted trend (baseline + slope × sessions)"
        series.append(Series(label, trend, "#dc2626", dashed=True))
    if not timeline.input.present:
        note = "timeline.jsonl not found"
    else:
        note = "no memory samples in timeline.jsonl"
    return line_chart(
        title="Target memory over time",
        x_label="time since run start (s)",
        y_label="target memory (MiB)",
        series=series,
        empty_note=note,
        y_unit=" MiB",
    )


def _rate_chart(events: _Events) -> Markup:
    width = events.bin_width_s
    label = "events received per second" + (f" (mean over {width:g} s)" if width > 1 else "")
    note = "events.jsonl not found" if not events.input.present else "no received frames"
    return line_chart(
        title="Events received per second",
        x_label="time since run start (s)",
        y_label="events received (events/s)",
        series=[Series(label, events.rates, "#2563eb", area=True)],
        empty_note=note,
        y_from_zero=True,
        y_unit=" events/s",
    )


def _latency_chart(events: _Events) -> Markup:
    rows = events.latency
    if not events.input.present:
        note = "events.jsonl not found"
    else:
        note = "no received event could be matched to its sent message"
    palette = (("p50", "#2563eb"), ("p90", "#f59e0b"), ("p99", "#dc2626"))
    series = [
        Series(
            name,
            [(i, getattr(r, f"{name}_ms")) for i, r in enumerate(rows)],
            colour,
            markers=True,
        )
        for name, colour in palette
    ]
    return line_chart(
        title="Event latency by type (send → first receipt)",
        x_label="AEP/1 event type",
        y_label="latency (ms)",
        series=series,
        empty_note=note,
        x_ticks=[(i, r.event_type) for i, r in enumerate(rows)],
        x_domain=(-0.5, len(rows) - 0.5),
        y_from_zero=True,
        y_unit=" ms",
    )


# --------------------------------------------------------------------------
# Formatting


def _num(value: object) -> float | None:
    """A finite JSON number as a float; ``None`` for anything else (booleans included)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _label(key: str) -> str:
    text = _COUNT_LABELS.get(key) or key.replace("_", " ")
    return text[:1].upper() + text[1:]


def _rows(
    data: Mapping[str, Any],
    order: Sequence[str],
    labels: Mapping[str, str],
    *,
    mono: frozenset[str] | set[str] = frozenset(),
) -> list[Row]:
    """Known keys in ``order`` first, then the rest in file order; missing keys are left out."""
    keys = [k for k in order if k in data] + [k for k in data if k not in order]
    rows = []
    for key in keys:
        value = data[key]
        if key.endswith("_s"):
            text = _seconds(value)
        elif key in mono:
            text = _identifier(value)
        else:
            text = _text(value)
        rows.append(Row(labels.get(key) or _label(key), text, mono=key in mono))
    return rows


def _text(value: object, missing: str = "—") -> str:
    """A value as page text: numbers with separators, booleans as yes/no, containers inline."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return " · ".join(_pair(str(k), v) for k, v in value.items())
    return str(value)


def _pair(key: str, value: object) -> str:
    if key.endswith("_s"):
        return f"{_label(key[:-2]).lower()} {_seconds(value)}"
    return f"{_label(key).lower()} {_text(value)}"


def _identifier(value: object) -> str:
    """Ids and seeds verbatim: no thousands separators in a seed someone will copy."""
    return str(value) if _is_int(value) else _text(value)


def _evidence_value(value: object) -> str:
    """Evidence is shown exactly: strings verbatim, anything else as JSON."""
    return value if isinstance(value, str) else _json(value)


def _json(value: object) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return repr(value)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _seconds(value: object) -> str:
    seconds = _num(value)
    if seconds is None:
        return _text(value)
    return f"{seconds:,.1f} s" if seconds >= 10 else f"{seconds:.3g} s"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _bytes(value: float) -> str:
    """Bytes in binary units, keeping the sign (a slope may be negative)."""
    sign = "−" if value < 0 else ""
    size = abs(float(value))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{sign}{size:,.0f} {unit}" if unit == "B" else f"{sign}{size:,.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
