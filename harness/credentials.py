"""Where simulated users get their tokens.

* ``jwt`` — mint HS256 tokens (AEP/1 §1 claims ``sub``, ``tenant``, ``exp``)
  with the shared secret;
* ``static`` — a file of pre-issued tokens, one line per simulated user:
  ``<tenant> <user> <token>`` (blank lines and ``#`` comments ignored), for
  staging systems that cannot mint;
* ``hook`` — a custom login call, ``package.module:function``, called with
  the :class:`~harness.types.UserKey` and returning the token (or an
  awaitable of it). Use it to log in through your identity provider.
"""

from __future__ import annotations

import importlib
import inspect
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jwt

from harness.errors import ConfigError, UsageError
from harness.settings import Settings
from harness.types import TenantId, UserId, UserKey


class Credentials(Protocol):
    """Gives each simulated user a token."""

    def fixed_users(self) -> list[UserKey] | None:
        """The users tokens exist for, if the provider decides them (``static``)."""
        ...

    async def token_for(self, user: UserKey) -> str:
        """The bearer token for ``user``."""
        ...


def require_jwt_secret(secret: str | None) -> str:
    """``secret``, which the ``jwt`` provider needs to mint tokens for a given target.

    Raises:
        ConfigError: none was set (exit 2), saying where to set it.
    """
    if not secret:
        raise ConfigError(
            "jwt_secret",
            None,
            "",
            "the jwt credential provider needs the target's signing secret: "
            "set $ISOHARNESS_JWT_SECRET, --jwt-secret or jwt_secret_file "
            "(or choose --credentials static or hook)",
        )
    return secret


class JwtCredentials:
    """Mints HS256 JWTs with ``sub``, ``tenant`` and ``exp`` claims.

    Args:
        secret: the signing secret the target verifies with.
        ttl_s: token lifetime; AEP/1 checks expiry when a connection opens.
    """

    def __init__(self, secret: str, *, ttl_s: float = 24 * 3600) -> None:
        self._secret = secret
        self._ttl = ttl_s
        self.minted: list[str] = []

    def fixed_users(self) -> list[UserKey] | None:
        return None

    async def token_for(self, user: UserKey) -> str:
        return self.mint(user)

    def mint(self, user: UserKey, *, exp: float | None = None) -> str:
        """A token for ``user`` expiring at ``exp`` (default: now + ttl)."""
        claims = {
            "sub": user.user,
            "tenant": user.tenant,
            "exp": int(exp if exp is not None else time.time() + self._ttl),
        }
        with warnings.catch_warnings():
            # The key length is the target's choice, not ours; don't repeat it per token.
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            return jwt.encode(claims, self._secret, algorithm="HS256")


class StaticCredentials:
    """Tokens read from a file of ``<tenant> <user> <token>`` lines."""

    def __init__(self, path: Path, *, source: str = "configuration") -> None:
        self.path = path
        self._tokens: dict[UserKey, str] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError("tokens_file", str(path), source, f"a readable file ({why})") from exc
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) != 3:
                # The line itself is not shown: it may hold a token.
                raise ConfigError(
                    "tokens_file",
                    str(path),
                    source,
                    f"line {number} has {len(parts)} fields; each line must be "
                    "'<tenant> <user> <token>'",
                )
            self._tokens[UserKey(TenantId(parts[0]), UserId(parts[1]))] = parts[2]
        if len(self._tokens) < 2:
            raise ConfigError(
                "tokens_file",
                str(path),
                source,
                f"tokens of at least two users (it has {len(self._tokens)}): isolation "
                "needs someone to be isolated from",
            )

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens.values())

    def fixed_users(self) -> list[UserKey] | None:
        return list(self._tokens)

    async def token_for(self, user: UserKey) -> str:
        try:
            return self._tokens[user]
        except KeyError:
            raise UsageError(f"{self.path} has no token for {user}") from None


class HookCredentials:
    """Tokens from a custom login function, ``package.module:function``."""

    def __init__(self, spec: str, *, source: str = "configuration") -> None:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            func = getattr(module, attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                "login_hook",
                spec,
                source,
                f"an importable 'package.module:function' ({type(exc).__name__}: {exc})",
            ) from exc
        if not callable(func):
            raise ConfigError("login_hook", spec, source, f"a function, not {type(func).__name__}")
        self._func: Callable[[UserKey], Any] = func

    def fixed_users(self) -> list[UserKey] | None:
        return None

    async def token_for(self, user: UserKey) -> str:
        result = self._func(user)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, str) or not result:
            raise UsageError(f"login_hook returned {type(result).__name__} for {user}, not a token")
        return result


def check_credentials(settings: Settings) -> None:
    """Set up the configured token provider once, so one that cannot work fails first.

    Uses no network: the ``jwt`` provider needs a secret (when a target is given;
    the embedded service makes its own), a tokens file must parse and name two
    users, a login hook must import.

    Raises:
        ConfigError: what is wrong, where it was set, and how to fix it (exit 2).
    """
    if settings.credentials == "jwt" and settings.target_url is not None:
        require_jwt_secret(settings.jwt_secret)
    elif settings.credentials == "static" and settings.tokens_file is not None:
        StaticCredentials(settings.tokens_file, source=settings.source_of("tokens_file"))
    elif settings.credentials == "hook" and settings.login_hook is not None:
        HookCredentials(settings.login_hook, source=settings.source_of("login_hook"))
