"""``cross_delivery``: a user received something that belongs to another user.

AEP/1 §4: "an event of user A's run is never sent on a connection of user B,
whatever the tenant, whatever the timing". Two independent signals, so a leak
is seen even when the service rewrote the tags on the leaked event:

* the frame's owner tags (``user_id``/``tenant_id``) name another user;
* the raw frame text carries another user's canary anywhere — in the content,
  the ``message_id``, a ``history`` entry, or a field nobody knew about — even
  with its case changed or cut short, as in a preview
  (:meth:`~harness.canary.CanaryBook.marks`).

A protocol without owner tags (its codec decodes events with ``user_id``
``None``) is judged by the canaries alone: every message a user sends carries
its canary, so whatever the service derives from it still names its owner.

A broker is also asked directly: :func:`check_outside_write` judges a user's
publish into another user's subject. Accepted, it is a delivery path into
that user's stream, reported even when nobody was subscribed to see it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, cast

from harness.aep import Event, Malformed, decode_json
from harness.canary import CanaryBook, recased
from harness.findings import Finding
from harness.oracles.policy import permitted, permitted_any
from harness.oracles.witness import clip, iso_time, locate
from harness.recording import OutsideWrite, Received, ReceivedBatch
from harness.types import DeliveryPolicy, TenantId, UserId, UserKey, ViolationKind

CANARY_PREFIX = "iso"
"""How every canary begins (:data:`harness.canary.CANARY_RE`)."""
MAX_RECEIVERS = 20_000
"""Receivers whose own canary is remembered, as a compiled search of about 700 bytes
(bounded memory in the longest soak; later receivers are scanned in full)."""


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
        owner_tags: the protocol's frames may carry ``user_id``/``tenant_id``
            (``False``: only canaries decide, and a malformed frame's fields
            are never read as tags).
    """

    def __init__(
        self, canaries: CanaryBook, *, policy: DeliveryPolicy, seed: int, owner_tags: bool = True
    ) -> None:
        self._canaries = canaries
        self._policy = policy
        self._seed = seed
        self._owner_tags = owner_tags
        # For each receiver whose own canary was seen (and holds no other "iso"):
        # the search for an "iso" that does not start that canary.
        self._foreign: dict[UserKey, Callable[[str], re.Match[str] | None]] = {}

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
        for mark in self._canaries.marks(rec.raw):
            owner = mark.owners[0]
            if owner in owners or permitted_any(self._policy, mark.owners, rec.receiver):
                continue
            field = locate(parsed_obj(), mark.found) or "raw frame"
            owners[owner] = {"signal": mark.signal, "canary": mark.found, "field": field}
            if len(mark.owners) > 1:
                owners[owner]["owners"] = [str(o) for o in mark.owners]
        for owner, how in owners.items():
            findings.append(self._finding(rec, owner, how, parsed_obj()))
        return findings

    def check_batch(self, batch: ReceivedBatch) -> list[Finding]:
        """:meth:`check` every frame of ``batch``, with one canary scan for all of them.

        A batch whose every frame is tagged for its receiver (or untagged) and
        carries no canary the receiver may not see is clean as a whole; any
        other batch is checked frame by frame, for the exact findings.
        """
        receiver = batch.receiver
        user, tenant = receiver.user, receiver.tenant
        received = batch.received
        suspect = False
        if batch.every_event:
            if self._owner_tags:
                for event in cast("Sequence[Event]", batch.frames):
                    tag = event.user_id
                    if tag is not None and (tag != user or event.tenant_id not in (tenant, None)):
                        suspect = True
                        break
        else:
            for frame, (raw, _) in zip(batch.frames, received, strict=True):
                if type(frame) is Event:
                    tag = frame.user_id
                    if tag is not None and (tag != user or frame.tenant_id not in (tenant, None)):
                        suspect = True
                        break
                elif getattr(frame, "user_id", None) is not None or '"user_id"' in raw:
                    suspect = True  # a malformed frame's tags, or a frame type of another codec
                    break
        if not suspect:
            # "\n" is outside the canary alphabet: no canary spans two frames.
            text = received[0][0] if len(received) == 1 else "\n".join([r for r, _ in received])
            foreign = self._foreign.get(receiver)
            # Every canary starts with "iso" and is read from where it starts. When
            # every "iso" in the text starts a copy of the receiver's own canary
            # (which has no "iso" inside), every canary in it is that one: the
            # usual batch, settled by one search instead of a scan of each copy.
            # A canary whose case a service changed starts otherwise (``recased``).
            if foreign is None or foreign(text) is not None or recased(text):
                for mark in self._canaries.marks(text):
                    if mark.owners == (receiver,):
                        canary = mark.found
                        if (
                            foreign is None
                            and mark.whole
                            and canary.islower()  # as minted, not recased
                            and CANARY_PREFIX not in canary[1:]
                            and len(self._foreign) < MAX_RECEIVERS
                        ):
                            # An "iso" that does not start the receiver's canary.
                            pattern = "iso(?!" + re.escape(canary[len(CANARY_PREFIX) :]) + ")"
                            self._foreign[receiver] = re.compile(pattern).search
                    elif not permitted_any(self._policy, mark.owners, receiver):
                        suspect = True
                        break
        if not suspect:
            return []
        findings: list[Finding] = []
        for rec in batch.records():
            findings += self.check(rec)
        return findings

    def _tag_owner(self, rec: Received, parsed_obj: Any) -> UserKey | None:
        frame = rec.frame
        user = getattr(frame, "user_id", None)
        if isinstance(user, str):
            # No tenant tag (None): the receiver's tenant, as for a malformed frame.
            tenant = getattr(frame, "tenant_id", None)
            tenant = tenant if isinstance(tenant, str) else rec.receiver.tenant
            owner = UserKey(TenantId(tenant), UserId(user))
            return owner if owner != rec.receiver else None
        if not self._owner_tags:
            return None
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


def check_outside_write(rec: OutsideWrite, *, policy: DeliveryPolicy, seed: int) -> list[Finding]:
    """One finding if the target accepted ``rec``, a write where the writer's messages
    must not go (none when refused, or when ``policy`` lets the owner receive them).

    The victim is the user the place belongs to (``None`` when it is nobody's in
    particular); the owner of what leaks is the writer.
    """
    if not rec.accepted or (rec.owner is not None and permitted(policy, rec.writer, rec.owner)):
        return []
    where = "outside its own subjects" if rec.owner is None else f"a subject of {rec.owner}"
    detail = (
        f"the target accepted {rec.writer}'s publish to {rec.target!r}, {where}, on "
        f"connection {rec.connection}: another user can put messages into that stream"
    )
    return [
        Finding(
            kind=ViolationKind.CROSS_DELIVERY,
            scenario=rec.scenario,
            victim=rec.owner,
            owner=rec.writer,
            detail=detail,
            evidence={
                "signal": "publish accepted",
                "target": rec.target,
                "connection": rec.connection,
                "received_at": iso_time(rec.wall),
                "received_mono": round(rec.mono, 6),
                "seed": seed,
            },
        )
    ]
