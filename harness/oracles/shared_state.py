"""``shared_state``: a user read, through the API, what another user wrote.

AEP/1 §4 No shared state: nothing written by user A through the API, and no
message of user A, is ever visible to user B. Two checks:

* :func:`check_exchange` — any foreign canary in any HTTP answer a user got;
* :func:`judge_cross_probe` — object-level authorization: B asks for A's
  resource id with B's own token. A success is a violation even with no
  canary in it (only the owner may succeed). A refusal counts as *isolated*
  only under positive controls: B's own session was valid, and A's object
  demonstrably existed before and after the probe. Otherwise the probe is
  *inconclusive*, never a pass.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from harness.canary import CanaryBook
from harness.findings import Finding
from harness.oracles.policy import permitted, permitted_any
from harness.oracles.witness import clip, iso_time
from harness.recording import HttpExchange
from harness.types import DeliveryPolicy, ScenarioId, UserKey, ViolationKind


class ProbeOutcome(enum.StrEnum):
    ISOLATED = "isolated"
    VIOLATION = "violation"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class CrossProbe:
    """One cross-user read with its positive controls.

    Attributes:
        prober: the user who tried to read.
        owner: the user the resource belongs to.
        owner_canary: the canary the owner's resource carries.
        owner_before: the owner's own read of the resource just before.
        probe: the prober's read, with the prober's token.
        owner_after: the owner's own read just after.
        prober_control: the prober's read of its own resource (session valid?).
    """

    scenario: ScenarioId
    prober: UserKey
    owner: UserKey
    owner_canary: str
    owner_before: HttpExchange | None
    probe: HttpExchange
    owner_after: HttpExchange | None
    prober_control: HttpExchange | None


def _shows(ex: HttpExchange | None, canary: str) -> bool:
    return ex is not None and 200 <= ex.status < 300 and canary in ex.body


def _evidence(ex: HttpExchange, seed: int) -> dict[str, Any]:
    return {
        "method": ex.method,
        "path": ex.path,
        "status": ex.status,
        "raw": clip(ex.body),
        "received_at": iso_time(ex.wall),
        "received_mono": round(ex.mono_end, 6),
        "seed": seed,
    }


def check_exchange(
    ex: HttpExchange, canaries: CanaryBook, *, policy: DeliveryPolicy, seed: int
) -> list[Finding]:
    """One finding per foreign owner whose canary is in the answer's body.

    Changed case and cut canaries count too (:meth:`CanaryBook.marks`); a cut
    that could be the reader's own, or another's it may read, does not.
    """
    findings = []
    reported: set[UserKey] = set()
    for mark in canaries.marks(ex.body):
        owner = mark.owners[0]
        if owner in reported or permitted_any(policy, mark.owners, ex.user):
            continue
        reported.add(owner)
        how: dict[str, Any] = {"canary": mark.found}
        if mark.signal != "canary":
            how["signal"] = mark.signal
        if len(mark.owners) > 1:
            how["owners"] = [str(o) for o in mark.owners]
        where = "another tenant's" if owner.tenant != ex.user.tenant else "another user's"
        findings.append(
            Finding(
                kind=ViolationKind.SHARED_STATE,
                scenario=ex.scenario,
                victim=ex.user,
                owner=owner,
                detail=f"{ex.user} read {where} data (owner {owner}) from {ex.method} {ex.path}",
                evidence=_evidence(ex, seed) | how,
            )
        )
    return findings


def judge_cross_probe(
    probe: CrossProbe, *, policy: DeliveryPolicy, seed: int
) -> tuple[ProbeOutcome, str, Finding | None]:
    """Classify one cross-user read: ``(outcome, reason, finding or None)``."""
    ex = probe.probe
    if permitted(policy, probe.owner, probe.prober):
        return ProbeOutcome.INCONCLUSIVE, "the policy lets the prober read it", None
    if 200 <= ex.status < 300:
        leaked = probe.owner_canary in ex.body
        what = "with the owner's canary in it" if leaked else "(the owner alone may succeed)"
        finding = Finding(
            kind=ViolationKind.SHARED_STATE,
            scenario=probe.scenario,
            victim=probe.prober,
            owner=probe.owner,
            detail=(
                f"{probe.prober} read {probe.owner}'s {ex.path} with its own token: "
                f"{ex.method} answered {ex.status} {what}"
            ),
            evidence=_evidence(ex, seed) | {"canary": probe.owner_canary, "leaked": leaked},
        )
        return ProbeOutcome.VIOLATION, "answered with success", finding
    if ex.status == 401:
        return ProbeOutcome.INCONCLUSIVE, "the prober's token was refused (401)", None
    if ex.status not in (403, 404):
        return ProbeOutcome.INCONCLUSIVE, f"the probe answered {ex.status}", None
    control = probe.prober_control
    if control is None or not 200 <= control.status < 300:
        status = "none" if control is None else control.status
        return ProbeOutcome.INCONCLUSIVE, f"the prober's own read failed ({status})", None
    if not (_shows(probe.owner_before, probe.owner_canary)):
        return ProbeOutcome.INCONCLUSIVE, "the owner's object was not there before the probe", None
    if not (_shows(probe.owner_after, probe.owner_canary)):
        return ProbeOutcome.INCONCLUSIVE, "the owner's object was not there after the probe", None
    return ProbeOutcome.ISOLATED, f"refused with {ex.status} under positive controls", None
