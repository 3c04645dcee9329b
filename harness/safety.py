"""Staging safety: which targets may be hit, and keeping secrets out of every output.

* :func:`check_target_allowed` decides from the URL alone, before any
  connection or DNS lookup, whether the harness may load a target. Loopback
  (127.0.0.0/8, ::1, ``localhost``) is always allowed; any other host must
  match an ``allowed_targets`` pattern. Pointing a load-and-isolation test at
  a shared environment must be a deliberate, written-down decision.
* :class:`Redactor` replaces every known secret (the JWT secret, every token
  minted or read), anything shaped like a JWT, ``token=`` query values and
  ``Bearer`` credentials with ``***`` in text and in JSON-like objects;
  :class:`RedactingFilter` does the same for log records.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from harness.errors import ConfigError

#: What every redacted secret becomes.
MASK = "***"

#: Secrets shorter than this are ignored: masking "ab" everywhere would mask everything.
MIN_SECRET_LENGTH = 4
FEW_LITERALS = 16
"""Up to this many secret variants, the redaction gate looks for each one itself."""

_B64URL = "[A-Za-z0-9_-]"
#: A JWT (JWS or JWE): base64url header and payload of JSON objects (``eyJ`` is
#: ``{"``), then every further dot-separated segment. Absorbing all trailing
#: segments means a token glued to another one is still masked whole.
JWT_SHAPE = rf"eyJ{_B64URL}+\.eyJ{_B64URL}*(?:\.{_B64URL}*)+"
_QUERY_VALUE = r"[^&#\s\"'<>]+"
_SHAPES = (
    JWT_SHAPE,
    # RFC 6750 §2.3: the access token in a URI query; the key stays, the value goes.
    rf"(?<=[?&;]token=){_QUERY_VALUE}",
    rf"(?<=[?&;]access_token=){_QUERY_VALUE}",
    # RFC 6750 §2.1: "Authorization: Bearer <token>"; the scheme name is case-insensitive.
    r"(?<=(?i:bearer) )[^\s\"'<>,;]+",
)
_JWT = re.compile(JWT_SHAPE)

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address; never looks a name up.

    Only the literal name ``localhost`` counts as a name: anything else could
    resolve anywhere, and resolving it here would already be a network call.
    """
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def safe_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for messages and reports."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK if "@" in url else url
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))


def check_target_allowed(url: str, allowed: Sequence[str], *, source: str = "the settings") -> None:
    """Refuse a target that is not loopback and that no ``allowed_targets`` pattern matches.

    Decided from the URL alone: no DNS lookup, no connection. Each pattern is
    an ``fnmatch`` pattern (``*``, ``?``, ``[...]``), compared case-insensitively
    with the URL's host, and with ``host:port`` where the port is the URL's, or
    the scheme's default (80 for http/ws, 443 for https/wss). A pattern equal
    to either is a match too, so an IPv6 ``[2001:db8::1]:8443`` can be listed
    literally. Patterns never see the path: ``*.staging.example.com`` allows
    ``https://api.staging.example.com/v1`` and ``staging.example.com:8443``
    allows only that port. ``*`` also matches dots, so ``*.example.com`` covers
    every subdomain level.

    Args:
        url: the target URL.
        allowed: the ``allowed_targets`` patterns.
        source: where the URL came from, for the message
            (``settings.source_of("target_url")``).

    Raises:
        ConfigError: ``key`` ``target_url``, the URL with credentials masked,
            ``source``, and the fix: for credentials in the URL, for a URL
            without a host, and for a host no pattern allows.
    """
    shown = safe_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError("target_url", shown, source, "not a URL with a host and port") from None
    if "@" in parts.netloc:
        raise ConfigError(
            "target_url",
            shown,
            source,
            "credentials do not belong in the URL; remove them, the credential options "
            "authenticate the users",
        )
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ConfigError("target_url", shown, source, "not a URL with a host")
    if is_loopback(host):
        return
    port = port or _DEFAULT_PORTS.get(parts.scheme.lower())
    bracketed = f"[{host}]" if ":" in host else host
    candidates = [host] if port is None else [host, f"{bracketed}:{port}"]
    for pattern in allowed:
        p = pattern.strip().lower()
        if any(p == c or fnmatchcase(c, p) for c in candidates):
            return
    suggestion = host if _is_address(host) or host.count(".") < 2 else "*." + host.partition(".")[2]
    raise ConfigError(
        "target_url",
        shown,
        source,
        f"{host} is not loopback and matches no allowed_targets pattern; "
        f"to load it deliberately, add a pattern such as {suggestion!r} to allowed_targets",
    )


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address (whose labels no wildcard should replace)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching exactly ``words``, longest first, shaped as a trie.

    A flat ``a|b|c`` alternation tries every word at every position; the trie
    tries one branch per character, so thousands of secrets stay cheap.
    """
    end = ""  # marks the end of a word; never a character key
    trie: dict[str, Any] = {}
    for word in sorted(words):
        if not word:
            raise ValueError("an empty word would match everywhere")
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[end] = {}

    def emit(node: dict[str, Any]) -> str:
        out = []
        while len(node) == 1 and end not in node:  # a chain: no choice to make
            ((char, node),) = node.items()
            out.append(re.escape(char))
        branches = [re.escape(char) + emit(child) for char, child in node.items() if char != end]
        alternatives = "|".join(branches)
        if branches and end in node:
            # Greedy "?": the longer secret wins, the shorter one matches if it must.
            out.append(f"(?:{alternatives})?")
        elif len(branches) > 1:
            out.append(f"(?:{alternatives})")
        else:
            out.append(alternatives)
        return "".join(out)

    return emit(trie)


def _variants(secret: str) -> set[str]:
    """The secret as it may appear: plain, percent-encoded in a URL, escaped in JSON."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}


class Redactor:
    """Masks secrets in text and in JSON-like objects.

    One compiled regex does all the work (the secrets as a trie, then the
    shapes), rebuilt only when a new secret is added, so :meth:`redact` is one
    regex pass per line. At each position the longest secret wins, so a secret
    containing another is masked whole.

    A JWT-shaped secret is not added literally: the JWT shape already masks it,
    which keeps the pattern small however many tokens a long run mints.

    Args:
        secrets: strings never to show. Empty and shorter than
            :data:`MIN_SECRET_LENGTH` ones are ignored.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._literals: set[str] = set()
        self._pattern = re.compile("|".join(_SHAPES))
        self._literal_pattern: re.Pattern[str] | None = None
        # The bytes gate's view of the secrets, swapped in as one: a few are searched
        # for as they are (a substring search for a long needle skips ahead by its
        # length, where the trie's regex steps through every byte), more by the trie over
        # UTF-8 bytes (literal characters encode to literal bytes).
        self._literals_utf8: tuple[tuple[bytes, ...], re.Pattern[bytes] | None] = ((), None)
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Mask these too from now on (thread-safe to call while others redact)."""
        new: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LENGTH or _JWT.fullmatch(secret):
                continue
            new |= {v for v in _variants(secret) if len(v) >= MIN_SECRET_LENGTH}
        new -= self._literals
        if not new:
            return
        self._literals |= new
        # Swapping in a new compiled pattern is one atomic assignment.
        trie = _trie_pattern(self._literals)
        self._literal_pattern = re.compile(trie)
        few = tuple(literal.encode() for literal in self._literals)
        if len(few) <= FEW_LITERALS:
            self._literals_utf8 = (few, None)
        else:
            self._literals_utf8 = ((), re.compile(trie.encode()))
        self._pattern = re.compile("|".join([trie, *_SHAPES]))

    def needs_redaction(self, text: str | bytes) -> bool:
        """Whether :meth:`redact` could change ``text``: a cheap necessary condition.

        Every shape needs a fixed marker: ``eyJ`` (a JWT), ``token=`` (both query
        forms), ``bearer `` in any case (``(?i:bearer)`` matches no character whose
        ``lower()`` is not the ASCII letter); a literal secret needs the trie to
        match. Text with none of them is what :meth:`redact` returns unchanged, found
        in well under a microsecond where the full pass costs ten. A one-character
        test (a ``memchr``) goes first where a marker has a rare character.

        ``text`` may also be UTF-8 bytes (what is about to be written), judged
        as the text they encode, and faster: a bytes search does not depend on
        the widest character in the text, and only ASCII letters need lowering
        (no other character matches ``bearer`` case-insensitively).
        """
        if isinstance(text, bytes):
            few, literals_utf8 = self._literals_utf8
            if (
                (b"J" in text and b"eyJ" in text)
                or (b"=" in text and b"token=" in text)
                or b"bearer " in text.lower()
            ):
                return True
            if literals_utf8 is not None:
                return literals_utf8.search(text) is not None
            for literal in few:
                if literal in text:
                    return True
            return False
        literals = self._literal_pattern
        return (
            ("J" in text and "eyJ" in text)
            or ("=" in text and "token=" in text)
            or "bearer " in text.lower()
            or (literals is not None and literals.search(text) is not None)
        )

    def redact(self, text: str) -> str:
        """``text`` with every secret and secret-shaped value replaced by ``***``."""
        return self._pattern.sub(MASK, text)

    def redact_obj(self, obj: Any) -> Any:
        """A redacted copy of a JSON-like value.

        Strings are redacted, dict keys included; dicts, lists and tuples are
        copied (tuples become lists); anything else is returned unchanged.
        """
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.redact_obj(v) for v in obj]
        return obj


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message, traceback and stack.

    Attach it to *handlers*: a filter on a logger does not see records that
    propagate up from its child loggers.

    Args:
        redactor: the run's redactor (secrets added later are masked too).
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place, redacted; always keeps it."""
        redact = self._redactor.redact
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the parts, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
