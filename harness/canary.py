"""Per-user canaries: unguessable markers that prove whose data a frame carries.

Every message, state value and thread a simulated user writes carries that
user's canary. A canary is ``iso`` followed by 16 base32 characters of
HMAC-SHA256(run key, "tenant/user"): unguessable without the run key, yet any
process that holds the run key and knows a user can recompute it, so pytest-xdist
workers agree on ownership without sharing a registry.

Canaries use only ``[a-z2-7]``, which JSON never escapes, so a search of the
raw frame text finds them wherever the service put them, even in fields the
harness does not know about or after the service rewrote the owner tags.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator

from harness.types import UserKey

CANARY_RE = re.compile(r"iso[a-z2-7]{16}")
"""Matches anything shaped like a canary; :meth:`CanaryBook.owner_of` says whose."""


def mint_canary(run_key: bytes, owner: UserKey) -> str:
    """Return the canary of ``owner`` in the run keyed by ``run_key``."""
    digest = hmac.new(run_key, str(owner).encode(), hashlib.sha256).digest()
    return "iso" + base64.b32encode(digest[:10]).decode().lower()


class CanaryBook:
    """The canaries of one run and the users they belong to.

    Args:
        run_key: the run's secret key (at least 16 random bytes).
    """

    def __init__(self, run_key: bytes) -> None:
        if len(run_key) < 16:
            raise ValueError("a run key needs at least 16 bytes")
        self._key = run_key
        self._owners: dict[str, UserKey] = {}
        self._canaries: dict[UserKey, str] = {}

    def canary_for(self, owner: UserKey) -> str:
        """The canary of ``owner``, registering the user on first use."""
        canary = self._canaries.get(owner)
        if canary is None:
            canary = mint_canary(self._key, owner)
            self._canaries[owner] = canary
            self._owners[canary] = owner
        return canary

    def register(self, owners: Iterable[UserKey]) -> None:
        """Register users minted elsewhere (another worker) so their canaries are known."""
        for owner in owners:
            self.canary_for(owner)

    def owner_of(self, canary: str) -> UserKey | None:
        """The user whose canary this is, or ``None`` for an unknown one."""
        return self._owners.get(canary)

    def find(self, text: str) -> Iterator[tuple[str, UserKey]]:
        """Yield ``(canary, owner)`` for every known canary in ``text``, once each."""
        seen: set[str] = set()
        search = CANARY_RE.search
        match = search(text)
        while match is not None:
            canary = match.group()
            if canary not in seen:
                seen.add(canary)
                owner = self._owners.get(canary)
                if owner is not None:
                    yield canary, owner
            # Resume one character on, not at the end: in "iso…iso…" a first,
            # unknown "iso" must not swallow the canary that starts inside it.
            match = search(text, match.start() + 1)

    def __len__(self) -> int:
        return len(self._owners)
