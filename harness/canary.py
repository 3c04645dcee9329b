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

A service may also change what it repeats. :meth:`CanaryBook.marks` finds a
canary whose case was changed (``upper()``, ``title()``: base32 ignores case,
and the MAC is still checked), and one cut short, as in a preview of a message
("the first 40 characters"). A cut canary has lost its MAC; it is attributed
only when it is the beginning of a real canary of this run: the owner's own,
minted again with the run key when the cut kept the whole owner, or else one
this process knows (it drives that user or saw its canary whole). A cut that
could be the receiver's own canary is never attributed to anyone else.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from harness.types import TenantId, UserId, UserKey

CANARY_RE = re.compile(r"iso[a-z2-7]{24,}")
"""Matches anything shaped like a canary (and what follows in the same alphabet);
:meth:`CanaryBook.find` decodes and authenticates each match."""

ANY_CASE_RE = re.compile(r"iso[a-z2-7]{24,}", re.IGNORECASE)
""":data:`CANARY_RE` for text whose case a service may have changed (slower: no literal
prefix to search for)."""

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
    owner = _owner_in(head)
    return None if owner is None else (canary, owner)


def recased(text: str) -> bool:
    """Whether ``text`` may hold a canary whose case was changed.

    A cheap necessary condition for the usual changes: ``upper()`` and
    ``swapcase()`` give ``ISO…``, ``title()`` and ``capitalize()`` ``Iso…``.
    """
    # Each "I" found by memchr, not a search for "ISO" and "Iso": this runs on every
    # batch of frames, and nearly all have no capital I at all.
    at = text.find("I")
    while at >= 0:
        if text[at + 1 : at + 3] in ("SO", "so"):
            return True
        at = text.find("I", at + 1)
    return False


def _owner_in(blob: bytes) -> UserKey | None:
    """The owner a canary's decoded bytes carry in clear, if they hold all of it."""
    n = blob[0] if blob else 0
    if n < 1 or n > 1 + MAX_OWNER_BYTES or len(blob) < 1 + n:
        return None
    split = 2 + blob[1]
    if split > 1 + n:
        return None
    try:
        return UserKey(TenantId(blob[2:split].decode()), UserId(blob[split : 1 + n].decode()))
    except UnicodeDecodeError:
        return None


class Mark(NamedTuple):
    """A user's canary found in a text, whole or cut short (:meth:`CanaryBook.marks`)."""

    found: str
    """The text as it was found (its case may differ from the canary's)."""
    owners: tuple[UserKey, ...]
    """Whose it is: one user, or for a cut canary every user of this process
    whose canary begins so (the cut left too little to tell them apart)."""
    whole: bool
    """The whole canary, MAC checked; ``False``: its beginning only."""

    @property
    def signal(self) -> str:
        """How it was found, for a witness: ``canary``, or how the service changed it."""
        recased = self.found != self.found.lower()
        if not self.whole:
            return "canary cut short" + (", case changed" if recased else "")
        return "canary, case changed" if recased else "canary"


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
        #: ``_owners``' canaries in order, to look a cut canary up by its beginning
        #: (rebuilt when ``_owners`` has grown; cut canaries are rare).
        self._sorted: list[str] = []

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
        """Yield ``(canary, owner)`` for every authentic canary in ``text``, once each.

        Canaries whose case was changed are found too (:func:`recased`); the
        canary yielded is the owner's own, in lower case.
        """
        for _, canary, owner in self._whole(text):
            yield canary, owner

    def _whole(self, text: str) -> Iterator[tuple[str, str, UserKey]]:
        """``(as found, canary, owner)`` for every authentic canary in ``text``, once each."""
        seen: set[str] = set()
        owners = self._owners
        recase = recased(text)
        search = ANY_CASE_RE.search if recase else CANARY_RE.search
        match = search(text)
        while match is not None:
            candidate = match.group().lower() if recase else match.group()
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
                start = match.start()
                yield text[start : start + len(canary)], canary, owner
            match = search(text, match.start() + len(canary))

    def marks(self, text: str) -> Iterator[Mark]:
        """Yield every canary of this run in ``text``, whole or cut short, once each.

        Whole canaries are :meth:`find`'s. A canary-shaped run of characters that
        is not one (:data:`CANARY_RE`: at least 27 characters) is the beginning of
        a canary when the owner it carries in clear, minted again, begins with it,
        or else when canaries this process knows begin with it (their owners, all
        of them). Anything else is ignored: garbled, forged, another run's.
        """
        whole = list(self._whole(text))
        for found, _, owner in whole:
            yield Mark(found, (owner,), True)
        recase = recased(text)
        seen = {canary for _, canary, _ in whole}
        for match in (ANY_CASE_RE if recase else CANARY_RE).finditer(text):
            cut = match.group().lower()
            if any(canary.startswith(cut) or cut.startswith(canary) for canary in seen):
                continue  # a whole canary (and what follows it), or a cut one seen already
            owners = self._owners_of_cut(cut)
            if owners:
                seen.add(cut)
                yield Mark(match.group(), owners, False)

    def _owners_of_cut(self, cut: str) -> tuple[UserKey, ...]:
        """Whose canary begins with ``cut`` (lower case, not a whole canary)."""
        try:
            blob = base64.b32decode(_padded(cut[3:]).upper())
        except (binascii.Error, ValueError):
            blob = b""
        owner = _owner_in(blob)
        if owner is not None:
            canary = mint_canary(self._key, owner)
            return (owner,) if canary.startswith(cut) else ()
        if len(self._sorted) != len(self._owners):
            self._sorted = sorted(self._owners)
        found: dict[UserKey, None] = {}
        at = bisect.bisect_left(self._sorted, cut)
        while at < len(self._sorted) and self._sorted[at].startswith(cut):
            found[self._owners[self._sorted[at]]] = None
            at += 1
        return tuple(found)

    def __len__(self) -> int:
        return len(self._canaries)


def _padded(chars: str) -> str:
    """Whole 8-character base32 blocks of ``chars`` (a partial last block dropped)."""
    return chars[: len(chars) - len(chars) % 8]
