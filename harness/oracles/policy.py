"""Who may legitimately receive or read what another user produced."""

from __future__ import annotations

from collections.abc import Iterable

from harness.types import DeliveryPolicy, UserKey


def permitted(policy: DeliveryPolicy, owner: UserKey, recipient: UserKey) -> bool:
    """Whether ``recipient`` may see data that belongs to ``owner`` under ``policy``.

    AEP/1 §4 is ``owner_only``; ``same_tenant`` is for services whose team
    members legitimately share events. Crossing tenants is never permitted.
    """
    if owner == recipient:
        return True
    return policy is DeliveryPolicy.SAME_TENANT and owner.tenant == recipient.tenant


def permitted_any(policy: DeliveryPolicy, owners: Iterable[UserKey], recipient: UserKey) -> bool:
    """Whether ``recipient`` may see data that belongs to any of ``owners``.

    For data that names several possible owners (a canary cut too short to tell
    them apart): it proves a leak only when none of them may be seen, the
    recipient itself included.
    """
    return any(permitted(policy, owner, recipient) for owner in owners)
