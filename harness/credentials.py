"""Where simulated users get their tokens.

* ``jwt`` — mint HS256 tokens (AEP/1 §1 claims ``sub``, ``tenant``, ``exp``)
  with the shared secret;
* ``static`` — a file of pre-issued tokens, one line per simulated user:
  ``<tenant> <user> <token>`` (blank lines and ``#`` comments ignored), for
  staging systems that cannot mint;
* ``hook`` — a custom login call, ``package.module:function``, called with
  the :class:`~harness.types.UserKey` and returning the token (or an
  awaitable of it), within :data:`LOGIN_HOOK_TIMEOUT_S`. Use it to log in
  through your identity provider.

A token goes into an HTTP header, so one with a character a header value cannot
hold (CR, LF, other control characters) is refused here, before it is sent, and
no message ever shows a token.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, Protocol

import jwt

from harness.errors import ConfigError, UsageError
from harness.settings import Settings
from harness.types import TenantId, UserId, UserKey

LOGIN_HOOK_TIMEOUT_S = 30.0
"""How long one call of a login hook may take to give its token (README: Tokens)."""

# RFC 9110 §5.5: a field value is visible ASCII, SP, HTAB and obs-text; anything
# else (CR and LF above all) would end the header or smuggle in another.
_NOT_IN_HEADER = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_NAMES = {"\r": "CR", "\n": "LF"}


def _header_fault(token: str) -> str | None:
    """Why ``token`` cannot be an HTTP header value, without showing it; ``None`` if it can."""
    bad = _NOT_IN_HEADER.search(token)
    if bad is None:
        return None
    char = bad.group()
    return f"{_NAMES.get(char, f'U+{ord(char):04X}')} at position {bad.start()}"


def aep_claims_fault(user: UserKey, token: str) -> str | None:
    """Whose token ``token`` says it is, when that is not ``user``; ``None`` otherwise.

    An AEP/1 service takes the user from the token's ``sub`` and ``tenant``
    claims, and the harness expects events tagged with the user the token was
    filed under: a token on another user's line would make every one of that
    user's events look delivered to the wrong user. The claims are read without
    checking the signature (the harness may not hold the key); a token that is
    not a JWT, or a claim that is missing or not a string, is the service's to
    judge.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    sub, tenant = claims.get("sub"), claims.get("tenant")
    sub = sub if isinstance(sub, str) else user.user
    tenant = tenant if isinstance(tenant, str) else user.tenant
    return None if (tenant, sub) == (user.tenant, user.user) else f"{tenant}/{sub}"


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
    """Tokens read from a file of ``<tenant> <user> <token>`` lines.

    Args:
        path: the tokens file.
        source: where ``path`` was set, for messages.

    Raises:
        ConfigError: the file is unreadable, a line is malformed, names a user
            already given a token, or holds a token no HTTP header can carry, or
            the file has fewer than two users (exit 2). No message shows a token.
    """

    def __init__(self, path: Path, *, source: str = "configuration") -> None:
        self.path = path
        self._source = source
        self._tokens: dict[UserKey, str] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError("tokens_file", str(path), source, f"a readable file ({why})") from exc
        self._line_of: dict[UserKey, int] = {}
        line_of = self._line_of
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            # The line itself is never shown: it holds a token.
            if len(parts) != 3:
                self._refuse(
                    f"line {number} has {len(parts)} fields; each line must be "
                    "'<tenant> <user> <token>'"
                )
            user = UserKey(TenantId(parts[0]), UserId(parts[1]))
            if user in line_of:
                # Silently keeping the later line would hide a copy-paste slip.
                self._refuse(
                    f"lines {line_of[user]} and {number} both give a token for {user}; "
                    "keep one line per user"
                )
            fault = _header_fault(parts[2])
            if fault is not None:
                self._refuse(
                    f"the token on line {number} has a character an HTTP header cannot "
                    f"carry ({fault}); write the token alone"
                )
            line_of[user] = number
            self._tokens[user] = parts[2]
        if len(self._tokens) < 2:
            self._refuse(
                f"tokens of at least two users (it has {len(self._tokens)}): isolation "
                "needs someone to be isolated from"
            )

    def _refuse(self, why: str) -> NoReturn:
        raise ConfigError("tokens_file", str(self.path), self._source, why)

    def check_aep_claims(self) -> None:
        """Refuse a token whose AEP/1 claims name another user than its line does.

        Raises:
            ConfigError: naming the first such line and whose token it holds
                (the claims, never the token), exit 2.
        """
        for user, token in self._tokens.items():
            claimed = aep_claims_fault(user, token)
            if claimed is not None:
                self._refuse(
                    f"the token on line {self._line_of[user]} is {claimed}'s (its sub and "
                    f"tenant claims), not {user}'s; put each token on its own user's line"
                )

    def require_users(self, count: int, *, source: str) -> None:
        """Refuse a file with tokens for fewer than ``count`` users, set by ``source``.

        Raises:
            ConfigError: the run needs more users than the file has (exit 2).
        """
        if len(self._tokens) < count:
            self._refuse(
                f"it has tokens for {len(self._tokens)} users and the run needs {count} "
                f"(users {count} from {source}); add tokens or lower --users"
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


def static_credentials(settings: Settings) -> StaticCredentials:
    """The tokens file of ``settings``, checked to hold a token for each of ``--users``.

    With the AEP/1 adapter each JWT's ``sub`` and ``tenant`` claims must name
    the user of its line (:func:`aep_claims_fault`).

    Scenarios may ask for more users than ``--users`` (``test_tenants`` needs
    two per tenant); only the scenario knows, so that is checked when it asks.

    Raises:
        ConfigError: see :class:`StaticCredentials`, and too few users (exit 2).
    """
    assert settings.tokens_file is not None
    static = StaticCredentials(settings.tokens_file, source=settings.source_of("tokens_file"))
    if settings.adapter == "aep":
        static.check_aep_claims()
    static.require_users(settings.users, source=settings.source_of("users"))
    return static


class HookCredentials:
    """Tokens from a custom login function, ``package.module:function``.

    Each call runs in a thread of its own (an awaitable it returns, in that
    thread's event loop), so a hook that blocks cannot stall the harness, and
    is given ``timeout_s`` to return the token.

    Args:
        spec: ``package.module:function``.
        source: where ``spec`` was set, for messages.
        timeout_s: how long one call may take.
        aep_claims: refuse a JWT whose ``sub`` and ``tenant`` claims name another
            user than the one asked for (:func:`aep_claims_fault`): a hook that
            logs every user in as one account would make every event look
            delivered to the wrong user.

    Raises:
        ConfigError: the hook does not import or is not callable (exit 2).
    """

    def __init__(
        self,
        spec: str,
        *,
        source: str = "configuration",
        timeout_s: float = LOGIN_HOOK_TIMEOUT_S,
        aep_claims: bool = False,
    ) -> None:
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
        self.spec = spec
        self._source = source
        self._timeout = timeout_s
        self._aep_claims = aep_claims
        self._func: Callable[[UserKey], Any] = func
        self._failure: ConfigError | None = None

    def fixed_users(self) -> list[UserKey] | None:
        return None

    async def token_for(self, user: UserKey) -> str:
        """The token the hook gives for ``user``.

        Raises:
            ConfigError: the hook raised, took longer than ``timeout_s``, or
                returned something that is not a token an HTTP header can carry,
                or (``aep_claims``) another user's token (exit 2). After one failure
                every later call fails the same way at once: a run whose users
                cannot all log in proves nothing.
        """
        if self._failure is None:
            try:
                return await self._token_for(user)
            except ConfigError as exc:
                self._failure = exc
                raise
        first = self._failure
        raise ConfigError(first.key, first.value, first.source, first.allowed)

    async def _token_for(self, user: UserKey) -> str:
        loop = asyncio.get_running_loop()
        # (what the hook returned, what it raised): set_result only, whatever it raised.
        outcome: asyncio.Future[tuple[object, BaseException | None]] = loop.create_future()

        def settle(value: object, error: BaseException | None) -> None:
            if not outcome.done():  # else: timed out meanwhile
                outcome.set_result((value, error))

        def call() -> None:
            value: object = None
            error: BaseException | None = None
            try:
                value = _call_hook(self._func, user, self._timeout)
            except BaseException as exc:  # noqa: BLE001 - reported, whatever the hook raised
                error = exc
            with suppress(RuntimeError):  # the caller's loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, value, error)

        threading.Thread(target=call, name=f"login_hook {user}", daemon=True).start()
        try:
            async with asyncio.timeout(self._timeout):
                result, error = await outcome
        except TimeoutError:
            # A thread cannot be stopped: a blocked hook is left behind (a daemon).
            self._refuse(
                f"it gave no token for {user} within {self._timeout:g} s; a login hook "
                "must return the user's token in that time"
            )
        if error is not None:
            # Its message is not shown: a login error may quote a password or a token.
            status = (
                f" (exit status {error.returncode})"
                if isinstance(error, subprocess.CalledProcessError)
                else ""
            )
            self._refuse(
                f"it raised {type(error).__name__}{status} for {user}; call it by hand to "
                "see why (its message is not shown: it may hold a secret)",
                cause=error,
            )
        if not isinstance(result, str) or not result:
            what = "an empty str" if isinstance(result, str) else type(result).__name__
            self._refuse(
                f"it returned {what} for {user}, not a token; a login hook must return "
                "the user's token as a non-empty str (or an awaitable of one)"
            )
        fault = _header_fault(result)
        if fault is not None:
            self._refuse(
                f"it returned a token for {user} with a character an HTTP header cannot "
                f"carry ({fault}); a login hook must return the token alone"
            )
        claimed = aep_claims_fault(user, result) if self._aep_claims else None
        if claimed is not None:
            self._refuse(
                f"it returned {claimed}'s token (its sub and tenant claims) for {user}; a "
                "login hook must log in as the user it is given"
            )
        return result

    def _refuse(self, why: str, *, cause: BaseException | None = None) -> NoReturn:
        raise ConfigError("login_hook", self.spec, self._source, why) from cause


def _call_hook(func: Callable[[UserKey], Any], user: UserKey, timeout_s: float) -> object:
    """``func(user)``, and what it returns awaited in an event loop of its own.

    The caller has stopped waiting after ``timeout_s``; the awaitable is cancelled
    later (twice that), so the thread ends and the caller's timeout is what is reported.
    """
    result = func(user)
    if inspect.isawaitable(result):
        awaitable: Awaitable[object] = result

        async def settle() -> object:
            return await asyncio.wait_for(awaitable, 2 * timeout_s)

        result = asyncio.run(settle())
    return result


def check_credentials(settings: Settings) -> None:
    """Set up the configured token provider once, so one that cannot work fails first.

    Uses no network: the ``jwt`` provider needs a secret (when a target is given;
    the embedded service makes its own), a tokens file must parse, give each user
    one token and hold tokens for ``--users`` users, a login hook must import (it
    is first called for the session's preflight user, before any scenario).

    Raises:
        ConfigError: what is wrong, where it was set, and how to fix it (exit 2).
    """
    if settings.credentials == "jwt" and settings.target_url is not None:
        require_jwt_secret(settings.jwt_secret)
    elif settings.credentials == "static" and settings.tokens_file is not None:
        static_credentials(settings)
    elif settings.credentials == "hook" and settings.login_hook is not None:
        HookCredentials(settings.login_hook, source=settings.source_of("login_hook"))
