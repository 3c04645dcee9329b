"""``cross_delivery``: a user received something that belongs to another user.

AEP/1 §4: "an event of user A's run is never sent on a connection of user B,
whatever the tenant, whatever the timing". Two independent signals, so a leak
is seen even when the service rewrote the tags on the leaked event:

* the frame's owner tags (``user_id``/``tenant_id``) name another user;
* the raw frame text carries another user's canary anywhere — in the content,
  the ``message_id``, a ``history`` entry, or a field nobody knew about.
"""

from __future__ import annotations

from typing import Any

from harness.aep import Malformed, decode_json
from harness.canary import CanaryBook
from harness.findings import Finding
from harness.oracles.policy import permitted
from harness.oracles.witness import clip, iso_time, locate
from harness.recording import Received
from harness.types import DeliveryPolicy, TenantId, UserId, UserKey, ViolationKind


def tagged_owner(obj: Any, receiver: UserKey) -> UserKey | None:
    """The user a frame says it belongs to, from its ``user_id``/``tenant_id`` tags."""
    if not isinstance(obj, dict):
        return None
    user = obj.get("user_id")
    if not isinstance(user, str):
        return None
    tenant = obj.get("tenant_id")
    return UserKey(TenantId(tenant if isinstance(tenant, str) else receiver.tenant), UserId(user))


class CrossDeliveryOracle:
    """Checks each received frame for data of a user other than its receiver.

    Args:
        canaries: the run's canary book.
        policy: who may receive another user's events.
        seed: the run's seed, put in every witness.
    """

    def __init__(self, canaries: CanaryBook, *, policy: DeliveryPolicy, seed: int) -> None:
        self._canaries = canaries
        self._policy = policy
        self._seed = seed

    def check(self, rec: Received) -> list[Finding]:
        """Return one finding per foreign owner found in ``rec`` (usually none)."""
        findings: list[Finding] = []
        owners: dict[UserKey, dict[str, Any]] = {}
        parsed: list[Any] = []

        def parsed_obj() -> Any:
            # Decoded again only on the rare path where something foreign is
            # present, never per frame (the transport already decoded it once).
            if not parsed:
                parsed.append(decode_json(rec.raw)[0])
            return parsed[0]

        tag_owner = self._tag_owner(rec, parsed_obj)
        if tag_owner is not None and not permitted(self._policy, tag_owner, rec.receiver):
            owners[tag_owner] = {"signal": "owner tags", "field": "user_id/tenant_id"}
        for canary, owner in self._canaries.find(rec.raw):
            if owner in owners or permitted(self._policy, owner, rec.receiver):
                continue
            field = locate(parsed_obj(), canary) or "raw frame"
            owners[owner] = {"signal": "canary", "canary": canary, "field": field}
        for owner, how in owners.items():
            findings.append(self._finding(rec, owner, how, parsed_obj()))
        return findings

    def _tag_owner(self, rec: Received, parsed_obj: Any) -> UserKey | None:
        frame = rec.frame
        user = getattr(frame, "user_id", None)
        if isinstance(user, str):
            tenant = getattr(frame, "tenant_id", rec.receiver.tenant)
            owner = UserKey(TenantId(tenant), UserId(user))
            return owner if owner != rec.receiver else None
        if isinstance(frame, Malformed) and '"user_id"' in rec.raw:
            tagged = tagged_owner(parsed_obj(), rec.receiver)
            return tagged if tagged is not None and tagged != rec.receiver else None
        return None

    def _finding(self, rec: Received, owner: UserKey, how: dict[str, Any], obj: Any) -> Finding:
        where = "another tenant's" if owner.tenant != rec.receiver.tenant else "another user's"
        what = obj.get("type", "frame") if isinstance(obj, dict) else "frame"
        detail = (
            f"{rec.receiver} received {where} {what} (owner {owner}, found by "
            f"{how['signal']} in {how['field']}) on connection {rec.connection}"
        )
        evidence: dict[str, Any] = {
            "raw": clip(rec.raw),
            "connection": rec.connection,
            "received_at": iso_time(rec.wall),
            "received_mono": round(rec.mono, 6),
            "seed": self._seed,
            **how,
        }
        if isinstance(obj, dict):
            for key in ("message_id", "run_id", "thread_id", "user_id", "tenant_id"):
                if isinstance(obj.get(key), str):
                    evidence[key] = obj[key]
        return Finding(
            kind=ViolationKind.CROSS_DELIVERY,
            scenario=rec.scenario,
            victim=rec.receiver,
            owner=owner,
            detail=detail,
            evidence=evidence,
        )
