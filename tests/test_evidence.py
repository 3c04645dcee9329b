"""What a PASS is worth: the leak rate a clean run rules out, in summary.json and on the terminal.

A run that checked ``n`` received events and found no cross-user delivery rules out,
at 95% confidence, a per-event leak rate above ``1 - 0.05 ** (1 / n)`` (about ``3 / n``,
the rule of three), assuming each misrouted event is caught when it happens and events
leak independently.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from harness.reporting.terminal import evidence_sentence, summary_lines
from harness.run import evidence_json, leak_rate_excluded

#: About what the default run checks (README: "a default run checks ~7,700 events").
DEFAULT_RUN_EVENTS = 7719


# -- the bound ---------------------------------------------------------------------------------


def test_one_clean_event_rules_out_only_leak_rates_above_95_percent() -> None:
    assert leak_rate_excluded(1) == pytest.approx(0.95, rel=1e-12)


def test_a_default_run_rules_out_a_leak_hitting_more_than_one_event_in_2577() -> None:
    rate = leak_rate_excluded(DEFAULT_RUN_EVENTS)

    assert rate == pytest.approx(1 - 0.05 ** (1 / DEFAULT_RUN_EVENTS), rel=1e-9)
    assert rate == pytest.approx(3.8806e-4, rel=1e-4)
    # At exactly that rate, a run would see no leak one time in twenty.
    assert (1 - rate) ** DEFAULT_RUN_EVENTS == pytest.approx(0.05, rel=1e-9)
    assert evidence_json(DEFAULT_RUN_EVENTS, cross_deliveries=0) == {
        "events_checked": DEFAULT_RUN_EVENTS,
        "leak_rate_excluded_95": rate,
        "one_in": 2577,
    }


def test_a_default_run_does_not_rule_out_the_auditors_one_in_3000_leak() -> None:
    """The planted bug that passed one default run in five is rarer than the bound."""
    evidence = evidence_json(DEFAULT_RUN_EVENTS, cross_deliveries=0)
    assert evidence is not None
    assert evidence["one_in"] < 3000
    assert evidence["leak_rate_excluded_95"] > 1 / 3000


def test_the_bound_is_the_exact_one_not_the_rule_of_three() -> None:
    for n in (10, 100, 10_000, 10_000_000):
        rate = leak_rate_excluded(n)
        assert rate == pytest.approx(-math.expm1(math.log(0.05) / n), rel=1e-12)
        assert rate < 3 / n  # the approximation overstates the bound, a little
    assert leak_rate_excluded(10_000_000) * 10_000_000 == pytest.approx(-math.log(0.05))


@pytest.mark.parametrize("n", [1, 2, 3, 19, 100, 1234, DEFAULT_RUN_EVENTS, 10**6, 10**9])
def test_one_in_is_rounded_down_so_the_sentence_never_overstates(n: int) -> None:
    evidence = evidence_json(n, cross_deliveries=0)
    assert evidence is not None
    one_in, rate = evidence["one_in"], evidence["leak_rate_excluded_95"]
    assert isinstance(one_in, int)
    assert 1 / one_in >= rate  # "more than 1 in one_in" is inside the excluded range
    assert 1 / (one_in + 1) < rate  # and as close to the bound as an integer gets


def test_no_events_checked_or_a_leak_found_leaves_the_block_out() -> None:
    assert evidence_json(0, cross_deliveries=0) is None
    # The bound assumes no leak was seen: with one seen it would understate it.
    assert evidence_json(DEFAULT_RUN_EVENTS, cross_deliveries=1) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events_checked": 0}, "events_checked 0: a bound needs at least one event"),
        ({"events_checked": -5}, "events_checked -5: a bound needs at least one event"),
        (
            {"events_checked": 10, "confidence": 1.0},
            "confidence 1.0: a probability strictly between 0 and 1",
        ),
    ],
)
def test_a_bound_over_nothing_or_with_certainty_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        leak_rate_excluded(**kwargs)


# -- the terminal ------------------------------------------------------------------------------

SENTENCE = "7,719 events checked; a leak hitting more than 1 in 2,577 events would have shown (95%)"


def write_summary(folder: Path, verdict: str, **extra: Any) -> Path:
    doc = {
        "schema": "isoharness.summary/1",
        "verdict": verdict,
        "exit_code": {"pass": 0, "fail": 1, "inconclusive": 4}[verdict],
        "target": {"url": "http://127.0.0.1:1"},
        "run": {"seed": 7},
        "counts": {"events_received": DEFAULT_RUN_EVENTS},
        "violation_counts": {"lost_event": 1} if verdict == "fail" else {},
    } | extra
    path = folder / "summary.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_pass_says_what_it_rules_out_just_before_the_verdict_line(tmp_path: Path) -> None:
    evidence = evidence_json(DEFAULT_RUN_EVENTS, cross_deliveries=0)
    lines = summary_lines(write_summary(tmp_path, "pass", evidence=evidence))

    assert lines[-2] == f"evidence: {SENTENCE}"
    # The last line keeps its format: tests and users parse it.
    shown = os.path.relpath(tmp_path / "summary.json")
    assert lines[-1] == f"isoharness: PASS — 0 violation(s) — report: {shown}"


@pytest.mark.parametrize("verdict", ["fail", "inconclusive"])
def test_only_a_pass_gets_the_evidence_line(tmp_path: Path, verdict: str) -> None:
    evidence = evidence_json(DEFAULT_RUN_EVENTS, cross_deliveries=0)
    summary = write_summary(tmp_path, verdict, evidence=evidence)

    assert not [line for line in summary_lines(summary) if line.startswith("evidence:")]
    assert evidence_sentence({"verdict": verdict, "evidence": evidence}) is None
    assert evidence_sentence({"verdict": "pass", "evidence": evidence}) == SENTENCE


def test_a_summary_written_before_the_block_existed_gets_no_evidence_line(tmp_path: Path) -> None:
    lines = summary_lines(write_summary(tmp_path, "pass"))

    assert not [line for line in lines if line.startswith("evidence:")]
    assert evidence_sentence({"verdict": "pass", "evidence": {"one_in": "many"}}) is None
