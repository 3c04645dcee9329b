"""Identifiers and small value types shared by every layer.

``NewType`` ids keep a user id from being passed where a tenant id is
expected; :class:`UserKey` is the identity AEP/1 §1 defines: the pair
(tenant, sub). The same ``sub`` in two tenants is two different users.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

UserId = NewType("UserId", str)
TenantId = NewType("TenantId", str)
ConnectionId = NewType("ConnectionId", str)
RunId = NewType("RunId", str)
ScenarioId = NewType("ScenarioId", str)


@dataclass(frozen=True, slots=True, order=True)
class UserKey:
    """A user as AEP/1 defines one: the pair (tenant, sub)."""

    tenant: TenantId
    user: UserId

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user}"

    @classmethod
    def parse(cls, text: str) -> UserKey:
        """Inverse of ``str()``: ``"tenant/user"`` → ``UserKey``."""
        tenant, sep, user = text.partition("/")
        if not sep:
            raise ValueError(f"not a user key (expected 'tenant/user'): {text!r}")
        return cls(TenantId(tenant), UserId(user))


class ViolationKind(enum.StrEnum):
    """What a finding says the target did wrong (``summary.json`` ``kind``)."""

    CROSS_DELIVERY = "cross_delivery"
    SHARED_STATE = "shared_state"
    LOST_EVENT = "lost_event"
    DUPLICATE_EVENT = "duplicate_event"
    OUT_OF_ORDER = "out_of_order"
    MEMORY_GROWTH = "memory_growth"
    RESOURCE_LEAK = "resource_leak"


class Verdict(enum.StrEnum):
    """The verdict of a run, with the exit code each maps to."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    INCONCLUSIVE = "inconclusive"
    INTERRUPTED = "interrupted"


class DeliveryPolicy(enum.StrEnum):
    """Who may legitimately receive an event of user A's run."""

    OWNER_ONLY = "owner_only"
    SAME_TENANT = "same_tenant"
