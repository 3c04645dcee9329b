"""The compact end-of-run summary printed in the terminal, from ``summary.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson


def _rel(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


def evidence_sentence(summary: dict[str, Any]) -> str | None:
    """What a PASS is worth, in words, from the summary's ``evidence`` block.

    ``7,719 events checked; a leak hitting more than 1 in 2,577 events would have shown
    (95%)``. ``None`` for any other verdict (the block stays in ``summary.json``), and for a
    summary without a well-formed block (one written before the block existed).
    """
    evidence = summary.get("evidence")
    if summary.get("verdict") != "pass" or not isinstance(evidence, dict):
        return None
    checked, one_in = evidence.get("events_checked"), evidence.get("one_in")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (checked, one_in)):
        return None
    return (
        f"{checked:,} event{'s' if checked != 1 else ''} checked; a leak hitting more than "
        f"1 in {one_in:,} event{'s' if one_in != 1 else ''} would have shown (95%)"
    )


def verdict_line(summary_path: Path) -> str:
    """The one line a run ends with: ``isoharness: <VERDICT> — N violation(s) — report: …``."""
    return summary_lines(summary_path)[-1]


def summary_lines(summary_path: Path, *, max_violations: int = 5) -> list[str]:
    """A few lines: verdict, counts, coverage, violations by kind, errors, what a PASS is
    worth (:func:`evidence_sentence`), report path.

    The last line always starts ``isoharness: <VERDICT>`` and names the report.
    """
    doc: dict[str, Any] = orjson.loads(summary_path.read_bytes())
    verdict = str(doc.get("verdict", "?")).upper()
    folder = summary_path.parent
    report = folder / "report.html"
    shown = report if report.exists() else summary_path
    target = doc.get("target", {})
    run = doc.get("run", {})
    counts = doc.get("counts", {})
    lines = [
        f"isoharness verdict {verdict} (exit {doc.get('exit_code')}) · target {target.get('url')}"
        f"{' (embedded)' if target.get('embedded') else ''} · seed {run.get('seed')}",
        "counts: "
        + ", ".join(
            f"{counts.get(key, 0)} {label}"
            for key, label in (
                ("users", "users"),
                ("connections", "connections"),
                ("messages_sent", "messages"),
                ("events_received", "events"),
                ("http_probes", "HTTP requests"),
            )
        ),
        "conditions created: "
        + ", ".join(f"{name} {count}" for name, count in doc.get("coverage", {}).items()),
    ]
    by_kind = doc.get("violation_counts", {})
    if by_kind:
        lines.append("violations: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
        for violation in doc.get("violations", [])[:max_violations]:
            lines.append(f"  - {violation.get('kind')}: {violation.get('detail')}")
    inconclusive = [s for s in doc.get("scenarios", []) if s.get("missing_conditions")]
    for scenario in inconclusive[:max_violations]:
        missing = ", ".join(scenario["missing_conditions"])
        lines.append(f"  ? {scenario['id']} created no {missing}")
    memory = doc.get("memory")
    if isinstance(memory, dict) and memory.get("status") == "not_judged":
        lines.append(f"memory_growth {memory.get('detail')}")
    errors = doc.get("errors", [])
    if errors:
        lines.append(
            "errors: "
            + ", ".join(f"{e.get('kind')} ×{e.get('count')}" for e in errors[:max_violations])
            + (" …" if len(errors) > max_violations else "")
        )
    evidence = evidence_sentence(doc)
    if evidence is not None:
        lines.append(f"evidence: {evidence}")
    total = sum(by_kind.values()) if by_kind else 0
    lines.append(f"isoharness: {verdict} — {total} violation(s) — report: {_rel(shown)}")
    return lines
