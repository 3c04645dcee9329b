"""cross_delivery: any frame carrying another user's data is a violation, however disguised."""

from __future__ import annotations

import orjson
import pytest

from harness.aep import decode_batch
from harness.oracles.cross_delivery import CrossDeliveryOracle, check_outside_write
from harness.recording import OutsideWrite, ReceivedBatch
from harness.types import ConnectionId, DeliveryPolicy, TenantId, UserId, UserKey, ViolationKind
from tests.builders import ALICE, BOB, EVE, SCENARIO, book, event, lifecycle, received


@pytest.fixture
def oracle() -> CrossDeliveryOracle:
    return CrossDeliveryOracle(book(), policy=DeliveryPolicy.OWNER_ONLY, seed=7)


def test_a_users_own_events_are_clean(oracle):
    canary = book().canary_for(ALICE)
    for obj in lifecycle(ALICE, f"{canary}-m1", f"{canary} hello"):
        assert oracle.check(received(ALICE, obj)) == []


def test_an_event_tagged_with_another_user_is_a_violation(oracle):
    [finding] = oracle.check(received(BOB, event(ALICE, "m1", "agent_started", 1)))
    assert finding.kind is ViolationKind.CROSS_DELIVERY
    assert (finding.victim, finding.owner) == (BOB, ALICE)
    assert finding.crosses_tenant is False
    assert finding.evidence["signal"] == "owner tags"
    assert finding.evidence["seed"] == 7


def test_a_leak_whose_tags_were_rewritten_to_the_recipient_is_found_by_canary(oracle):
    alice = book().canary_for(ALICE)
    leaked = event(BOB, f"{alice}-m3", "tool_completed", 4, data={"output": f"{alice} secret"})
    [finding] = oracle.check(received(BOB, leaked))
    assert finding.owner == ALICE
    assert finding.evidence["signal"] == "canary"
    assert finding.evidence["field"] == "message_id"
    assert alice in finding.evidence["raw"]


def test_a_foreign_history_entry_is_found(oracle):
    alice, bob = book().canary_for(ALICE), book().canary_for(BOB)
    obj = event(
        BOB, f"{bob}-m1", "agent_completed", 5, data={"history": [f"{alice}-m1", f"{bob}-m1"]}
    )
    [finding] = oracle.check(received(BOB, obj))
    assert finding.owner == ALICE
    assert finding.evidence["field"] == "data.history[0]"


def test_a_canary_in_an_unknown_field_or_non_json_frame_is_found(oracle):
    alice = book().canary_for(ALICE)
    [in_unknown] = oracle.check(received(BOB, {"type": "debug", "blob": {"x": [f"..{alice}.."]}}))
    assert in_unknown.evidence["field"] == "blob.x[0]"
    [in_garbage] = oracle.check(received(BOB, None, raw=f"<html>{alice}</html>"))
    assert in_garbage.owner == ALICE


def test_the_same_sub_in_another_tenant_is_another_user(oracle):
    [finding] = oracle.check(received(ALICE, event(EVE, "m1", "agent_started", 1)))
    assert finding.owner == EVE
    assert finding.crosses_tenant is True


def test_same_tenant_policy_allows_team_members_but_not_other_tenants():
    oracle = CrossDeliveryOracle(book(), policy=DeliveryPolicy.SAME_TENANT, seed=0)
    assert oracle.check(received(BOB, event(ALICE, "m1", "agent_started", 1))) == []
    [finding] = oracle.check(received(BOB, event(EVE, "m1", "agent_started", 1)))
    assert finding.crosses_tenant is True


def test_one_finding_per_foreign_owner_in_a_frame(oracle):
    alice, eve = book().canary_for(ALICE), book().canary_for(EVE)
    obj = event(ALICE, f"{alice}-m1", "agent_thinking", 2, data={"thought": f"{alice} {eve}"})
    findings = oracle.check(received(BOB, obj))
    assert {f.owner for f in findings} == {ALICE, EVE}


def test_unknown_canary_shaped_strings_are_not_violations(oracle):
    obj = {"type": "pong", "note": "iso" + "a" * 16}
    assert oracle.check(received(BOB, obj, raw=orjson.dumps(obj).decode())) == []


def batch_of(receiver, objs, conn: str = "c1") -> ReceivedBatch:
    frames = [(orjson.dumps(obj).decode(), False) for obj in objs]
    decoded, every_event = decode_batch(frames)
    return ReceivedBatch(
        SCENARIO, receiver, ConnectionId(conn), 1.0, 1.7e9, frames, decoded, every_event
    )


def test_after_its_own_canary_a_receiver_still_gets_a_foreign_one_reported(oracle):
    # The first batch teaches the oracle BOB's own canary; later batches holding only
    # copies of it are settled without a scan, and one more canary must still be seen.
    bob, alice = book().canary_for(BOB), book().canary_for(ALICE)
    assert oracle.check_batch(batch_of(BOB, lifecycle(BOB, f"{bob}-m1", f"{bob} hi"))) == []
    assert oracle.check_batch(batch_of(BOB, lifecycle(BOB, f"{bob}-m2", f"{bob} hi"))) == []
    leaked = lifecycle(BOB, f"{bob}-m3", f"{bob} and {alice}")  # tags rewritten to BOB
    findings = oracle.check_batch(batch_of(BOB, leaked))
    assert {(f.victim, f.owner) for f in findings} == {(BOB, ALICE)}
    assert {f.evidence["signal"] for f in findings} == {"canary"}


def test_an_iso_that_starts_no_canary_next_to_ones_own_is_not_a_violation(oracle):
    bob = book().canary_for(BOB)
    assert oracle.check_batch(batch_of(BOB, lifecycle(BOB, f"{bob}-m1", f"{bob} hi"))) == []
    words = f"{bob} isolation isotope iso{bob[3:-1]}"  # the last: the canary, cut short
    assert oracle.check_batch(batch_of(BOB, lifecycle(BOB, f"{bob}-m2", words))) == []


# -- a service may repeat another user's data changed: upper-cased, or cut to a preview -------


def leaked_to_bob(oracle, text: str) -> list:
    """Findings for a batch of BOB's own run (after one clean batch) whose thought says ``text``."""
    bob = book().canary_for(BOB)
    assert oracle.check_batch(batch_of(BOB, lifecycle(BOB, f"{bob}-m1", f"{bob} hi"))) == []
    run = lifecycle(BOB, f"{bob}-m2", f"{bob} hi")
    run[1]["data"]["thought"] = text
    return oracle.check_batch(batch_of(BOB, run))


def test_another_users_canary_upper_cased_is_a_leak(oracle):
    alice = book().canary_for(ALICE)
    [finding] = leaked_to_bob(oracle, f"RECENT: {alice.upper()} NOTE 1")
    assert (finding.victim, finding.owner) == (BOB, ALICE)
    assert finding.evidence["signal"] == "canary, case changed"
    assert finding.evidence["canary"] == alice.upper()
    assert finding.evidence["field"] == "data.thought"


def test_another_users_canary_cut_to_a_preview_is_a_leak(oracle):
    alice = book().canary_for(ALICE)
    for preview, signal in (
        (alice[:30], "canary cut short"),
        (alice[:30].title(), "canary cut short, case changed"),
    ):
        [finding] = leaked_to_bob(oracle, f"recent activity: {preview}…")
        assert (finding.victim, finding.owner, finding.evidence["signal"]) == (BOB, ALICE, signal)
        assert finding.evidence["canary"] == preview


def test_ones_own_canary_cut_or_upper_cased_is_not_a_leak(oracle):
    bob = book().canary_for(BOB)
    assert leaked_to_bob(oracle, f"you said: {bob[:30]}… ({bob.upper()})") == []


def test_a_cut_that_may_be_the_receivers_own_canary_is_not_a_leak():
    # Two users whose canaries begin alike: a cut too short to tell them apart.
    alike = [UserKey(TenantId("acme-staging"), UserId(f"user-000{i}")) for i in (1, 2)]
    canaries = book()
    one, two = (canaries.canary_for(user) for user in alike)
    common = next(i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b)
    oracle = CrossDeliveryOracle(canaries, policy=DeliveryPolicy.OWNER_ONLY, seed=7)
    for receiver in (alike[0], BOB):
        obj = event(receiver, "m1", "agent_thinking", 2, data={"thought": one[:common]})
        findings = oracle.check(received(receiver, obj))
        if receiver == BOB:  # a third user: whichever of the two it was, not BOB's
            [finding] = findings
            assert finding.evidence["signal"] == "canary cut short"
            assert finding.evidence["owners"] == [str(user) for user in alike]
        else:
            assert findings == []


def outside_write(writer, owner, *, accepted: bool) -> OutsideWrite:
    answer = "" if accepted else 'nats: permissions violation for publish to "u0.outside"'
    return OutsideWrite(SCENARIO, writer, ConnectionId("c4"), 1.5, 1.7e9, owner, "u0.outside",
                        accepted, answer)  # fmt: skip


def test_an_accepted_write_into_another_users_place_is_a_leak_to_that_user():
    [finding] = check_outside_write(
        outside_write(BOB, ALICE, accepted=True), policy=DeliveryPolicy.OWNER_ONLY, seed=7
    )
    assert finding.kind is ViolationKind.CROSS_DELIVERY
    assert (finding.victim, finding.owner) == (ALICE, BOB)  # BOB's message, in ALICE's stream
    assert finding.evidence["signal"] == "publish accepted"
    assert finding.evidence["target"] == "u0.outside"


def test_a_refused_write_or_one_the_policy_allows_is_no_finding():
    owner_only, same_tenant = DeliveryPolicy.OWNER_ONLY, DeliveryPolicy.SAME_TENANT
    assert (
        check_outside_write(outside_write(BOB, ALICE, accepted=False), policy=owner_only, seed=7)
        == []
    )
    assert (
        check_outside_write(outside_write(BOB, ALICE, accepted=True), policy=same_tenant, seed=7)
        == []
    )
    # Across tenants, or into a place that is nobody's in particular, it still is.
    [other_tenant] = check_outside_write(
        outside_write(EVE, ALICE, accepted=True), policy=same_tenant, seed=7
    )
    assert other_tenant.crosses_tenant is True
    [nobodys] = check_outside_write(
        outside_write(BOB, None, accepted=True), policy=same_tenant, seed=7
    )
    assert (nobodys.victim, nobodys.owner) == (None, BOB)
    assert "outside its own subjects" in nobodys.detail
