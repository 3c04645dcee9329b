"""The NATS adapter: ``adapter = "nats"``, over NATS's WebSocket listener (``nats-py``).

Each simulated user is a NATS user, in an account per tenant. Its user name
comes from the ``username`` template, its password is its token (static
credentials: the ``tokens_file`` lists ``<tenant> <user> <password>``). A
connection subscribes as widely as its permissions allow (the ``subscribe``
patterns, widest first: a correct server refuses the wide ones, which is
expected and not an error), tries to publish where it must not
(``publish_outside``), and publishes its canary-bearing messages on its own
subject (``subject``). NATS has no owner attribution: events carry no owner
tags, so canaries alone decide — any foreign canary a user receives, through
a subscription too wide, an import of another account's stream or another
user publishing into its subjects, is a ``cross_delivery``. So is an outside
publish the server accepts, whether or not anyone was subscribed to see it:
the victim is the user whose subject it was (``{other}``).

A user's run is one event: its own message coming back on its subscription
(``Lifecycle(("message",))``), so a message the server drops is a
``lost_event``. Options, the ``[adapter]`` table of ``isoharness.toml``::

    [adapter]
    name = "nats"
    username = "{tenant}.{user}"           # the NATS user name of a simulated user
    subject = "{user}.{thread}"            # where a user publishes its messages
    subscribe = [">", "{user}.>"]          # tried in order; the first accepted is kept
    publish_outside = ["{other}.outside"]  # publishes the server must refuse
    monitor_url = "http://127.0.0.1:8222"  # optional: the monitoring port (below)

Placeholders: ``{tenant}`` and ``{user}`` (the user's ids), ``{thread}`` (the
thread id, in ``subject`` only) and ``{other}`` (in ``publish_outside`` only:
another user of the same tenant this adapter connected, or began to connect,
earlier; the attempt is skipped when there is none). Values are made subject-safe: any character
other than letters, digits, ``_`` and ``-`` becomes ``_``.

With ``monitor_url`` (and ``memory_source`` left at ``auto``) the timeline
samples the server's ``/varz``: ``mem`` as the memory figure, and
``connections`` as the gauge ``nats_connections``, which must be back at its
idle value once every user has left (``resource_leak``).
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from harness.adapters import AdapterContext, JsonMemoryProbe
from harness.aep import ErrorFrame, Event, Frame, Malformed, decode_json
from harness.codec import Lifecycle
from harness.errors import ConfigError
from harness.transport.base import Channel
from harness.transport.nats import OutsidePublish, open_nats_channel
from harness.types import TenantId, UserId, UserKey
from harness.users import SimUser

NATS_LIFECYCLE = Lifecycle(("message",))
"""One event per run: the user's own message, delivered back on its subscription."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "username": frozenset({"tenant", "user"}),
    "subject": frozenset({"tenant", "user", "thread"}),
    "subscribe": frozenset({"tenant", "user"}),
    "publish_outside": frozenset({"tenant", "user", "other"}),
}
_DEFAULTS: dict[str, Any] = {
    "username": "{tenant}.{user}",
    "subject": "{user}.{thread}",
    "subscribe": [">", "{user}.>"],
    "publish_outside": ["{other}.outside"],
    "monitor_url": None,
}


def subject_token(value: str) -> str:
    """``value`` as one NATS subject token (no ``.``, wildcards or spaces)."""
    return _UNSAFE.sub("_", value) or "_"


@dataclass(frozen=True, slots=True)
class NatsCodec:
    """NATS messages as a :class:`~harness.codec.Codec`.

    A sent message is a JSON object ``{"message_id", "thread_id", "content"}``;
    a received frame is what :mod:`harness.transport.nats` makes of a delivered
    message, ``{"subject", "sub", "data"}`` with the payload in ``data``, or
    ``{"error"}`` when the server refused a publish of the user's own message.
    """

    name: str = "nats"
    lifecycle: Lifecycle = NATS_LIFECYCLE
    owner_tags: bool = False

    def encode_message(self, *, message_id: str, thread_id: str, content: str) -> str:
        body = {"message_id": message_id, "thread_id": thread_id, "content": content}
        return orjson.dumps(body).decode()

    def decode(self, raw: str, *, binary: bool = False) -> Frame:
        obj, reason = decode_json(raw)
        if reason is not None:
            return Malformed(f"not a frame of the NATS channel: {reason}")
        if not isinstance(obj, dict):
            return Malformed("not a frame of the NATS channel", obj)
        if isinstance(obj.get("error"), str):
            return ErrorFrame("nats_error", obj["error"])
        subject, data = obj.get("subject"), obj.get("data")
        if not isinstance(subject, str) or not isinstance(data, str):
            return Malformed("not a frame of the NATS channel", obj)
        body, _ = decode_json(data)
        if not (
            isinstance(body, dict)
            and isinstance(body.get("message_id"), str)
            and isinstance(body.get("thread_id"), str)
        ):
            return Malformed(f"a message on {subject!r} without message_id and thread_id", obj)
        return Event(
            type="message",
            user_id=None,
            tenant_id=None,
            thread_id=body["thread_id"],
            message_id=body["message_id"],
            run_id=body["message_id"],
            seq=None,
            data={"subject": subject, "subscription": obj.get("sub")},
        )


NATS_CODEC = NatsCodec()


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """The adapter's options, checked (see the module docstring)."""

    username: str
    subject: str
    subscribe: tuple[str, ...]
    publish_outside: tuple[str, ...]
    monitor_url: str | None


def parse_options(options: Mapping[str, Any], source: str) -> NatsOptions:
    """Check the ``[adapter]`` table.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, an unknown
            placeholder, or a ``monitor_url`` that is not http(s).
    """
    for key in options:
        if key not in _DEFAULTS:
            close = difflib.get_close_matches(key, list(_DEFAULTS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(_DEFAULTS)
            raise ConfigError("adapter option", key, source, f"unknown key; {hint}")
    values = {**_DEFAULTS, **options}
    for key in ("username", "subject"):
        _check_template(key, values[key], source)
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("subscribe", "publish_outside"):
        value = values[key]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(key, value, source, "a list of subject templates")
        for item in value:
            _check_template(key, item, source)
        lists[key] = tuple(value)
    if not lists["subscribe"]:
        raise ConfigError("subscribe", [], source, "at least one subscription, e.g. '{user}.>'")
    monitor = values["monitor_url"]
    if monitor is not None and (
        not isinstance(monitor, str) or urlsplit(monitor).scheme not in ("http", "https")
    ):
        raise ConfigError(
            "monitor_url", monitor, source, "the http(s) URL of the NATS monitoring port"
        )
    return NatsOptions(
        username=values["username"],
        subject=values["subject"],
        subscribe=lists["subscribe"],
        publish_outside=lists["publish_outside"],
        monitor_url=monitor.rstrip("/") if monitor else None,
    )


def _check_template(key: str, value: Any, source: str) -> None:
    allowed = _PLACEHOLDERS[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(key, value, source, "a non-empty string template")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ConfigError(key, value, source, f"a template with valid braces ({exc})") from None
    unknown = sorted(names - allowed)
    if unknown:
        raise ConfigError(
            key,
            value,
            source,
            f"unknown placeholder {{{unknown[0]}}}; use "
            + ", ".join(f"{{{name}}}" for name in sorted(allowed)),
        )


def _fill(template: str, **values: str) -> str:
    return template.format(**{name: subject_token(value) for name, value in values.items()})


class NatsAdapter:
    """Simulated users as NATS users (see the module docstring).

    Args:
        options: the checked options.
        url: the server's WebSocket URL.
        context: the harness's target settings (TLS).
    """

    name = "nats"
    codec: NatsCodec = NATS_CODEC
    capabilities: frozenset[str] = frozenset()

    def __init__(self, options: NatsOptions, url: str, context: AdapterContext) -> None:
        self.options = options
        self.url = url
        self._tls = context.ssl_context
        #: Users opened so far, or being opened, per tenant (``{other}`` in ``publish_outside``).
        self._seen: dict[TenantId, list[UserId]] = {}

    def username(self, user: SimUser) -> str:
        return self.options.username.format(tenant=user.key.tenant, user=user.key.user)

    async def open(self, user: SimUser) -> Channel:
        key = user.key
        opts = self.options
        names = {"tenant": key.tenant, "user": key.user}

        def route(text: str) -> str:
            thread = orjson.loads(text).get("thread_id", "")
            return _fill(opts.subject, thread=str(thread), **names)

        subscribe = [_fill(pattern, **names) for pattern in opts.subscribe]
        peers = self._seen.setdefault(key.tenant, [])
        other = next((peer for peer in peers if peer != key.user), None)
        # Seen from the start: users opened together still find each other. The
        # other user need not be listening: the server must refuse the publish.
        if key.user not in peers:
            peers.append(key.user)
        outside: list[OutsidePublish] = []
        for template in opts.publish_outside:
            if "{other}" in template and other is None:
                continue
            subject = _fill(template, other=other or "", **names)
            owner = UserKey(key.tenant, other) if "{other}" in template and other else None
            text = self.codec.encode_message(
                message_id=f"{user.canary}-outside",
                thread_id="outside",
                content=f"{user.canary} published by {key} on {subject}, outside its subjects",
            )
            outside.append((subject, text, owner))
        # Each outside publish and the server's answer are in the channel's
        # outside_attempts, which the harness records and reports.
        return await open_nats_channel(
            self.url,
            user=self.username(user),
            password=user.token,
            subscribe=subscribe,
            route=route,
            publish_outside=outside,
            ssl_context=self._tls,
        )

    def memory_probe(self) -> JsonMemoryProbe | None:
        if self.options.monitor_url is None:
            return None
        return JsonMemoryProbe(
            url=self.options.monitor_url + "/varz",
            path="mem",
            gauges=(("nats_connections", "connections"),),
        )

    async def aclose(self) -> None:
        return None


def _ws_url(base_url: str) -> str:
    """The WebSocket URL of the server at ``base_url`` (``http://h:p`` → ``ws://h:p``)."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path or "", "", ""))


def create(context: AdapterContext) -> NatsAdapter:
    """The :data:`~harness.adapters.AdapterFactory` of ``adapter = "nats"``.

    The target URL is the server's WebSocket listener (``ws://127.0.0.1:8080``).

    Raises:
        ConfigError: a mistake in the ``[adapter]`` table (see :func:`parse_options`).
    """
    options = parse_options(context.options, context.options_source)
    return NatsAdapter(options, _ws_url(context.base_url), context)
