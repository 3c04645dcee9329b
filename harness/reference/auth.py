"""Bearer-token authentication for the reference service (AEP/1 §1).

Tokens are HS256 JWTs. A token is valid when its signature verifies with the
service's secret and it carries ``sub`` and ``tenant`` as non-empty strings and
``exp`` as a number in the future. ``exp`` is **required**: a token without it
is malformed (401), so no credential is valid forever.

Where the token comes from: the ``Authorization: Bearer <token>`` header; on
``/ws`` only, the ``?token=`` query parameter is also accepted (browsers cannot
set handshake headers). When the header is present it wins, even if it is
invalid and the query parameter is valid: a request carries one credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Identity:
    """A user: the pair (tenant, sub). The same ``sub`` in two tenants is two users."""

    tenant: str
    sub: str


def decode_token(token: str, secret: str) -> Identity | None:
    """Return the identity a token proves, or None for any invalid token.

    Invalid means: not a JWT, not HS256, wrong signature, expired, or missing
    (or of the wrong type) any of ``sub``, ``tenant``, ``exp``.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub", "tenant"]},
        )
    except jwt.PyJWTError:
        return None
    sub, tenant = claims.get("sub"), claims.get("tenant")
    if not isinstance(sub, str) or not isinstance(tenant, str) or not sub or not tenant:
        return None
    return Identity(tenant=tenant, sub=sub)


def token_from(headers: Mapping[str, str], query: Mapping[str, str], *, allow_query: bool) -> str:
    """Return the request's bearer token, or "" when it carries none in a usable form."""
    header = headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    if allow_query:
        return query.get("token", "")
    return ""
