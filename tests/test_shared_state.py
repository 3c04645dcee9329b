"""shared_state: foreign canaries in API answers, and cross-user reads under positive controls."""

from __future__ import annotations

from harness.oracles.shared_state import CrossProbe, ProbeOutcome, check_exchange, judge_cross_probe
from harness.types import DeliveryPolicy, ViolationKind
from tests.builders import ALICE, BOB, EVE, SCENARIO, book, exchange

POLICY = DeliveryPolicy.OWNER_ONLY
A = book().canary_for(ALICE)
B = book().canary_for(BOB)
PATH = f"/api/state/private-{A}"


def probe(status: int, body: str = '{"error": "not_found"}', **controls) -> CrossProbe:
    parts = {
        "owner_before": exchange(ALICE, PATH, 200, f'{{"value": "{A}"}}'),
        "owner_after": exchange(ALICE, PATH, 200, f'{{"value": "{A}"}}'),
        "prober_control": exchange(BOB, f"/api/state/private-{B}", 200, f'{{"value": "{B}"}}'),
    } | controls
    return CrossProbe(
        SCENARIO,
        BOB,
        ALICE,
        A,
        probe=exchange(BOB, PATH, status, body, purpose="cross_read"),
        **parts,
    )


def test_reading_back_ones_own_value_is_clean():
    assert (
        check_exchange(
            exchange(ALICE, "/api/state/profile", 200, f'{{"value": "{A}"}}'),
            book(),
            policy=POLICY,
            seed=1,
        )
        == []
    )


def test_another_users_canary_in_an_answer_is_shared_state():
    [finding] = check_exchange(
        exchange(BOB, "/api/state/profile", 200, f'{{"value": "{A}"}}'),
        book(),
        policy=POLICY,
        seed=1,
    )
    assert finding.kind is ViolationKind.SHARED_STATE
    assert (finding.victim, finding.owner, finding.crosses_tenant) == (BOB, ALICE, False)
    assert finding.evidence["path"] == "/api/state/profile"


def test_a_preview_of_another_users_value_is_shared_state_and_of_ones_own_is_not():
    body = f'{{"threads": [{{"preview": "{A[:30].upper()}…"}}]}}'
    [finding] = check_exchange(
        exchange(BOB, "/api/threads", 200, body), book(), policy=POLICY, seed=1
    )
    assert (finding.victim, finding.owner) == (BOB, ALICE)
    assert (finding.evidence["signal"], finding.evidence["canary"]) == (
        "canary cut short, case changed",
        A[:30].upper(),
    )
    assert (
        check_exchange(exchange(ALICE, "/api/threads", 200, body), book(), policy=POLICY, seed=1)
        == []
    )


def test_a_refusal_under_positive_controls_is_isolated():
    outcome, _, finding = judge_cross_probe(probe(404), policy=POLICY, seed=1)
    assert (outcome, finding) == (ProbeOutcome.ISOLATED, None)


def test_a_success_is_a_violation_even_without_a_canary():
    outcome, _, finding = judge_cross_probe(
        probe(200, '{"value": "redacted"}'), policy=POLICY, seed=1
    )
    assert outcome is ProbeOutcome.VIOLATION
    assert finding is not None
    assert finding.evidence["leaked"] is False


def test_a_refusal_without_the_owners_object_is_inconclusive_not_a_pass():
    gone = exchange(ALICE, PATH, 404, '{"error": "not_found"}')
    outcome, reason, _ = judge_cross_probe(probe(404, owner_before=gone), policy=POLICY, seed=1)
    assert outcome is ProbeOutcome.INCONCLUSIVE
    assert reason == "the owner's object was not there before the probe"


def test_a_refusal_when_the_probers_session_is_invalid_is_inconclusive():
    bad = exchange(BOB, f"/api/state/private-{B}", 401, '{"error": "unauthorized"}')
    outcome, reason, _ = judge_cross_probe(probe(404, prober_control=bad), policy=POLICY, seed=1)
    assert outcome is ProbeOutcome.INCONCLUSIVE
    assert reason == "the prober's own read failed (401)"
    outcome, reason, _ = judge_cross_probe(probe(401), policy=POLICY, seed=1)
    assert (outcome, reason) == (ProbeOutcome.INCONCLUSIVE, "the prober's token was refused (401)")


def test_a_server_error_is_inconclusive():
    outcome, reason, _ = judge_cross_probe(probe(503), policy=POLICY, seed=1)
    assert (outcome, reason) == (ProbeOutcome.INCONCLUSIVE, "the probe answered 503")


def test_other_tenants_canary_marks_the_crossing():
    e = book().canary_for(EVE)
    [finding] = check_exchange(
        exchange(ALICE, "/api/threads", 200, f'["{e}"]'),
        book(),
        policy=DeliveryPolicy.SAME_TENANT,
        seed=1,
    )
    assert finding.crosses_tenant is True
