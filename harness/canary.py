"""Per-user canaries: unforgeable markers that prove whose data a frame carries.

Every message, state value and thread a simulated user writes carries that
user's canary. A canary is self-describing: ``iso`` followed by the base32 of

    [n] [payload: n bytes] [MAC: 10 to 14 bytes, to a multiple of 5 bytes in all]

where the payload is the owner (``[len(tenant)] tenant user``, UTF-8) and the MAC
is HMAC-SHA256 under the run key of everything before it, truncated. Any process holding
the run key decodes any canary it meets and checks its MAC, so the pytest-xdist
workers of one run attribute each other's canaries without sharing a registry,
and the target can neither guess nor forge one (a forged or garbled canary is
ignored, never attributed).

An owner longer than :data:`MAX_OWNER_BYTES` would make canaries too long for
thread ids and state keys (1–128 characters); its canary carries a digest of
the owner instead (``n`` = 0) and is attributed only where that user is known
(:meth:`CanaryBook.register`, for example every user of a tokens file).

Canaries use only ``[a-z2-7]``, which JSON never escapes, so a search of the
raw frame text finds them wherever the service put them, even in fields the
harness does not know about or after the service rewrote the owner tags.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator

from harness.types import TenantId, UserId, UserKey

CANARY_RE = re.compile(r"iso[a-z2-7]{24,}")
"""Matches anything shaped like a canary (and what follows in the same alphabet);
:meth:`CanaryBook.find` decodes and authenticates each match."""

MAX_OWNER_BYTES = 48
"""Longest ``tenant`` + ``user`` (UTF-8 bytes) a canary carries in clear; at most
99 characters, so ``label-<canary>`` stays a valid AEP/1 key."""

_MAC_BYTES = 10
_DIGEST_BYTES = 12
_DOMAIN = b"isoharness canary/2\x00"


def _mac(run_key: bytes, head: bytes) -> bytes:
    """At least ``_MAC_BYTES``, as many more as fill the last base32 block (no padding)."""
    size = _MAC_BYTES + -(len(head) + _MAC_BYTES) % 5
    return hmac.new(run_key, _DOMAIN + head, hashlib.sha256).digest()[:size]


def _payload(owner: UserKey) -> bytes:
    tenant, user = owner.tenant.encode(), owner.user.encode()
    if len(tenant) + len(user) > MAX_OWNER_BYTES:
        return b""  # too long to carry: the digest form
    return bytes([len(tenant)]) + tenant + user


def _chars(n: int) -> int:
    """How many base32 characters follow ``iso`` for a payload of ``n`` bytes."""
    size = 1 + (n or _DIGEST_BYTES) + _MAC_BYTES
    return -(-size // 5) * 8


def mint_canary(run_key: bytes, owner: UserKey) -> str:
    """Return the canary of ``owner`` in the run keyed by ``run_key``."""
    payload = _payload(owner)
    body = payload or hashlib.sha256(str(owner).encode()).digest()[:_DIGEST_BYTES]
    head = bytes([len(payload)]) + body
    blob = head + _mac(run_key, head)
    return "iso" + base64.b32encode(blob).decode().lower()


def decode_canary(run_key: bytes, text: str) -> tuple[str, UserKey | None] | None:
    """Read the canary at the start of ``text`` (which begins with ``iso``).

    Returns:
        ``(canary, owner)`` when a canary with a valid MAC starts ``text``
        (``owner`` is ``None`` for the digest form, which names nobody by
        itself); ``None`` for anything else: too short, garbled, forged.
    """
    try:
        n = base64.b32decode(text[3:11].upper())[0]
    except (binascii.Error, ValueError, IndexError):
        return None
    if n > 1 + MAX_OWNER_BYTES:
        return None
    end = 3 + _chars(n)
    canary = text[:end]
    if len(canary) != end:
        return None
    try:
        blob = base64.b32decode(canary[3:].upper())
    except (binascii.Error, ValueError):
        return None
    size = 1 + (n or _DIGEST_BYTES)
    head, mac = blob[:size], blob[size:]
    if not hmac.compare_digest(mac, _mac(run_key, head)):
        return None
    if n == 0:
        return canary, None
    split = 2 + head[1]
    if split > len(head):
        return None
    try:
        owner = UserKey(TenantId(head[2:split].decode()), UserId(head[split:].decode()))
    except UnicodeDecodeError:
        return None
    return canary, owner


class CanaryBook:
    """The canaries of one run and the users they belong to.

    Args:
        run_key: the run's secret key (at least 16 random bytes).
    """

    def __init__(self, run_key: bytes) -> None:
        if len(run_key) < 16:
            raise ValueError("a run key needs at least 16 bytes")
        self._key = run_key
        #: Every canary seen or minted with a valid MAC → its owner (a cache of decodes).
        self._owners: dict[str, UserKey] = {}
        #: The users this process minted or registered (the users it drives).
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
        """Know users minted elsewhere. Only needed for owners too long to be carried
        in their canary (:data:`MAX_OWNER_BYTES`); every other canary decodes itself."""
        for owner in owners:
            canary = mint_canary(self._key, owner)
            self._owners[canary] = owner

    def minted(self) -> list[UserKey]:
        """The users whose canaries this book minted (the users this process drives)."""
        return list(self._canaries)

    def owner_of(self, canary: str) -> UserKey | None:
        """The user whose canary this is, or ``None`` for an unknown or forged one."""
        owner = self._owners.get(canary)
        if owner is not None or not canary.startswith("iso"):
            return owner
        decoded = decode_canary(self._key, canary)
        if decoded is None or decoded[0] != canary or decoded[1] is None:
            return None
        self._owners[canary] = decoded[1]
        return decoded[1]

    def find(self, text: str) -> Iterator[tuple[str, UserKey]]:
        """Yield ``(canary, owner)`` for every authentic canary in ``text``, once each."""
        seen: set[str] = set()
        owners = self._owners
        search = CANARY_RE.search
        match = search(text)
        while match is not None:
            candidate = match.group()
            # The common case: the canary ends where the alphabet does ("…-m3", "… note").
            owner = owners.get(candidate)
            canary = candidate
            if owner is None:
                decoded = decode_canary(self._key, candidate)
                if decoded is not None:
                    canary, owner = decoded
                    if owner is None:
                        owner = owners.get(canary)
                    elif len(owners) < 100_000:
                        owners[canary] = owner
            if owner is None:
                # Resume one character on, not at the end: in "iso…iso…" a first,
                # garbled "iso" must not swallow the canary that starts inside it.
                match = search(text, match.start() + 1)
                continue
            if canary not in seen:
                seen.add(canary)
                yield canary, owner
            match = search(text, match.start() + len(canary))

    def __len__(self) -> int:
        return len(self._canaries)
