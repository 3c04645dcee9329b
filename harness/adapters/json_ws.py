"""The declarative JSON-over-WebSocket adapter: ``adapter = "json"``, no code.

For services whose frames are JSON objects, one per WebSocket text frame,
with their own field names. The ``[adapter]`` table of ``isoharness.toml``
(``[tool.isoharness.adapter]`` in ``pyproject.toml``) says where each piece
of an event is, what one run looks like, what a user's message looks like
and how the token is sent::

    [adapter]
    name = "json"
    path = "/ws"                      # optional: the WebSocket path (default: that of target_url)
    lifecycle = ["run.start", "run.think", "tool.call", "tool.done", "run.end"]
    repeatable = ["run.think"]        # optional: types a run may send more than once
    error_types = ["oops"]            # optional: frames reporting an error
    ignore_types = ["pong", "ack"]    # optional: frames that are neither events nor errors
    message = { op = "say", conv = "{thread_id}", msg = "{message_id}", text = "{content}" }

    [adapter.fields]                  # dotted paths into each received frame
    type = "kind"                     # required
    message_id = "msg"                # required: the id of the message that started the run
    thread_id = "conv"                # optional
    run_id = "run"                    # optional (default: one run per message id)
    user_id = "who.uid"               # optional, with tenant_id: the run's owner
    tenant_id = "who.org"
    seq = "n"                         # optional: 1, 2, 3 … within a run
    data = "body"                     # optional: the event's payload object
    error_code = "code"               # optional, in error frames
    error_message = "detail"

    [adapter.auth]
    mode = "first_message"            # header (default), query, subprotocol, first_message, none
    message = { op = "hello", auth = { bearer = "{token}" } }
    ready_type = "hello.ok"           # optional: wait for this frame before sending
    refused_types = ["hello.denied"]  # optional (needs ready_type): a refusal
    timeout = 10                      # seconds to wait for ready_type

Auth modes and their keys: ``header`` — ``header`` (default
``Authorization``) and ``value`` (default ``Bearer {token}``); ``query`` —
``param`` (default ``token``); ``subprotocol`` — ``value`` (default
``{token}``) offered after the fixed ``protocols`` (a list, default none);
``first_message`` — ``message`` (a table with ``{token}``), ``ready_type``,
``refused_types``, ``timeout``; ``none`` — no keys.

Templates are TOML tables whose *string values* may hold placeholders:
``{message_id}``, ``{thread_id}``, ``{content}`` and ``{canary}`` in
``message`` (which needs ``{message_id}`` and ``{content}``: they carry the
canary and tie events back to the message), ``{token}``, ``{user}`` and
``{tenant}`` in the auth templates. ``{{`` and ``}}`` are literal braces.
Values are substituted into the strings and the table is then serialised
as JSON, so no value needs escaping.

Decoding: a frame whose type is in ``lifecycle`` is an event; its
``message_id`` must be a string, the other ids strings or integers, ``seq``
an integer, ``data`` an object; in ``error_types`` (or ``refused_types``),
an error; in ``ignore_types`` (or ``ready_type``), ignored; anything else is
malformed, with the reason. Without ``user_id``/``tenant_id`` events carry
no owner and canaries alone decide; without ``seq`` order and duplicates are
judged by type alone.

Every mistake in the table is one :class:`~harness.errors.ConfigError`,
raised by :func:`create` before anything connects.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson

from harness.adapters import AdapterContext, JsonMemoryProbe
from harness.aep import CLOSE_UNAUTHORIZED, ErrorFrame, Event, Frame, Malformed, Pong, decode_json
from harness.canary import CANARY_RE
from harness.codec import Lifecycle
from harness.errors import AuthRefused, ConfigError, ProtocolMismatch, TargetError
from harness.transport.base import Channel, ChannelClosed, Connector
from harness.transport.fast import FastConnector
from harness.transport.websocket import WebSocketConnector
from harness.users import SimUser

AuthMode = Literal["header", "query", "subprotocol", "first_message", "none"]

AUTH_MODES: tuple[AuthMode, ...] = ("header", "query", "subprotocol", "first_message", "none")
DEFAULT_AUTH_TIMEOUT_S = 10.0
REFUSAL_CLOSE_CODES = frozenset({1008, 4001, 4003, CLOSE_UNAUTHORIZED, 4403})
"""Close codes that, right after the auth message, mean the credentials were refused."""

MESSAGE_PLACEHOLDERS = ("message_id", "thread_id", "content", "canary")
AUTH_PLACEHOLDERS = ("token", "user", "tenant")

#: ``[adapter.fields]`` keys, with what each one is.
FIELDS: dict[str, str] = {
    "type": "the event's type",
    "message_id": "the id of the message that started the run",
    "thread_id": "the thread of that message",
    "run_id": "the run's id",
    "user_id": "the run owner's user id",
    "tenant_id": "the run owner's tenant id",
    "seq": "the event's number within its run",
    "data": "the event's payload object",
    "error_code": "an error frame's code",
    "error_message": "an error frame's message",
}
REQUIRED_FIELDS = ("type", "message_id")
TOP_KEYS = (
    "path",
    "fields",
    "lifecycle",
    "repeatable",
    "error_types",
    "ignore_types",
    "message",
    "auth",
)
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "header": ("header", "value"),
    "query": ("param",),
    "subprotocol": ("value", "protocols"),
    "first_message": ("message", "ready_type", "refused_types", "timeout"),
    "none": (),
}

_PATH = re.compile(r"[A-Za-z0-9_$@:-]+(?:\.[A-Za-z0-9_$@:-]+)*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_MISSING: Any = object()


# -- templates -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fill:
    """A string with placeholders: ``literals[0] + values[names[0]] + literals[1] + …``."""

    literals: tuple[str, ...]
    names: tuple[str, ...]

    def render(self, values: Mapping[str, str]) -> str:
        parts = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            parts += (values[name], literal)
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Template:
    """A JSON value with placeholders in its strings, checked once, filled per use.

    Attributes:
        names: every placeholder the template uses.
    """

    shape: Any
    names: frozenset[str]

    def render(self, values: Mapping[str, str]) -> str:
        """The filled value as JSON text."""
        return orjson.dumps(_fill(self.shape, values)).decode()


def _fill(shape: Any, values: Mapping[str, str]) -> Any:
    if type(shape) is _Fill:
        return shape.render(values)
    if type(shape) is dict:
        return {key: _fill(value, values) for key, value in shape.items()}
    if type(shape) is list:
        return [_fill(value, values) for value in shape]
    return shape


class _Options:
    """Reads one adapter table; every mistake is a :class:`ConfigError` naming the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(key, value, self.source, allowed)

    def check_keys(self, table: Mapping[str, Any], known: Sequence[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = (
                    f"did you mean {prefix + close[0]!r}?"
                    if close
                    else "known keys: " + ", ".join(prefix + k for k in known)
                )
                raise self.error("adapter option", prefix + key, f"unknown key; {hint}")

    def table(self, parent: Mapping[str, Any], key: str, prefix: str) -> Mapping[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(prefix + key, value, "a table")
        return value

    def missing(self, key: str, what: str) -> ConfigError:
        return self.error("adapter option", key, f"missing; the json adapter needs {what}")

    def path(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, str) or _PATH.fullmatch(value) is None:
            raise self.error(
                key, value, "a dotted path of field names, such as 'type' or 'meta.owner.id'"
            )
        return tuple(value.split("."))

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, value, "a non-empty string")
        return value

    def names(self, key: str, value: Any, *, empty: bool = True) -> tuple[str, ...]:
        allowed = "a list of distinct non-empty strings" + ("" if empty else ", at least one")
        if not isinstance(value, list) or (not value and not empty):
            raise self.error(key, value, allowed)
        if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
            raise self.error(key, value, allowed)
        return tuple(value)

    def string_template(self, key: str, value: Any, allowed: Sequence[str]) -> _Fill:
        if not isinstance(value, str):
            raise self.error(key, value, "a string")
        return self._compile(key, value, allowed)

    def template(
        self, key: str, value: Any, allowed: Sequence[str], required: Sequence[str]
    ) -> Template:
        if not isinstance(value, Mapping) or not value:
            raise self.error(
                key,
                value,
                "a table (the JSON object to send) whose strings may hold "
                + ", ".join("{" + name + "}" for name in allowed),
            )
        names: set[str] = set()
        shape = self._shape(key, value, allowed, names)
        absent = [name for name in required if name not in names]
        if absent:
            need = " and ".join("{" + name + "}" for name in required)
            raise self.error(
                key,
                _plain(value),
                f"has no {{{absent[0]}}}; the template needs {need} in its string values",
            )
        return Template(shape, frozenset(names))

    def _shape(self, key: str, value: Any, allowed: Sequence[str], names: set[str]) -> Any:
        if isinstance(value, Mapping):
            return {k: self._shape(f"{key}.{k}", v, allowed, names) for k, v in value.items()}
        if isinstance(value, list):
            return [self._shape(f"{key}[{i}]", v, allowed, names) for i, v in enumerate(value)]
        if isinstance(value, str):
            fill = self._compile(key, value, allowed)
            names.update(fill.names)
            return fill if fill.names else fill.literals[0]
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, value, "a finite number (JSON has no inf or nan)")
        if isinstance(value, bool | int | float) or value is None:
            return value
        raise self.error(key, str(value), "a string, number, boolean, list or table")

    def _compile(self, key: str, text: str, allowed: Sequence[str]) -> _Fill:
        literals: list[str] = []
        names: list[str] = []
        buffer: list[str] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            buffer.append(self._literal(key, text, text[position : match.start()]))
            token = match.group(0)
            if token in ("{{", "}}"):
                buffer.append(token[0])
            else:
                name = match.group(1)
                if name not in allowed:
                    shown = ", ".join("{" + n + "}" for n in allowed)
                    raise self.error(key, text, f"unknown placeholder {{{name}}}; allowed: {shown}")
                literals.append("".join(buffer))
                buffer = []
                names.append(name)
            position = match.end()
        buffer.append(self._literal(key, text, text[position:]))
        literals.append("".join(buffer))
        return _Fill(tuple(literals), tuple(names))

    def _literal(self, key: str, text: str, chunk: str) -> str:
        if "{" in chunk or "}" in chunk:
            raise self.error(key, text, "an unmatched brace; write {{ or }} for a literal one")
        return chunk


def _plain(value: Any) -> Any:
    """A TOML table as plain dicts, for error messages."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """How a connection presents its user's token (see the module docstring)."""

    mode: AuthMode = "header"
    header: str = "Authorization"
    value: _Fill = _Fill(("Bearer ", ""), ("token",))
    param: str = "token"
    protocols: tuple[str, ...] = ()
    message: Template | None = None
    ready_type: str | None = None
    refused_types: tuple[str, ...] = ()
    timeout_s: float = DEFAULT_AUTH_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class JsonConfig:
    """A validated ``[adapter]`` table (see the module docstring)."""

    fields: Mapping[str, tuple[str, ...]]
    lifecycle: Lifecycle
    message: Template
    error_types: frozenset[str] = frozenset()
    ignore_types: frozenset[str] = frozenset()
    auth: Auth = Auth()
    path: str | None = None


def parse_options(options: Mapping[str, Any], source: str) -> JsonConfig:
    """Validate an ``[adapter]`` table.

    Raises:
        ConfigError: the first mistake: an unknown key (with a did-you-mean), a
            missing required key, a bad path, list, template or auth setting.
    """
    opts = _Options(source)
    opts.check_keys(options, TOP_KEYS, "")

    raw_fields = opts.table(options, "fields", "")
    if "fields" not in options:
        raise opts.missing("fields", "a [adapter.fields] table of dotted paths, such as type")
    opts.check_keys(raw_fields, tuple(FIELDS), "fields.")
    for key in REQUIRED_FIELDS:
        if key not in raw_fields:
            raise opts.missing(f"fields.{key}", f"the dotted path of {FIELDS[key]}")
    fields = {key: opts.path(f"fields.{key}", value) for key, value in raw_fields.items()}
    if ("user_id" in fields) != ("tenant_id" in fields):
        given, absent = (
            ("user_id", "tenant_id") if "user_id" in fields else ("tenant_id", "user_id")
        )
        raise opts.error(
            f"fields.{given}",
            raw_fields[given],
            f"needs fields.{absent} too: an owner is a (tenant, user) pair; "
            "give both, or neither (canaries alone then decide)",
        )

    if "lifecycle" not in options:
        raise opts.missing("lifecycle", "the list of event types of one run, in order")
    events = opts.names("lifecycle", options["lifecycle"], empty=False)
    repeatable = opts.names("repeatable", options.get("repeatable", []))
    outside = [name for name in repeatable if name not in events]
    if outside:
        raise opts.error("repeatable", list(repeatable), f"{outside[0]!r} is not in lifecycle")
    lifecycle = Lifecycle(events, frozenset(repeatable))

    error_types = opts.names("error_types", options.get("error_types", []))
    ignore_types = opts.names("ignore_types", options.get("ignore_types", []))
    seen: dict[str, str] = {name: "lifecycle" for name in events}
    for key, names in (("error_types", error_types), ("ignore_types", ignore_types)):
        for name in names:
            if name in seen:
                raise opts.error(key, list(names), f"{name!r} is in {seen[name]} too")
            seen[name] = key

    if "message" not in options:
        raise opts.missing(
            "message", "the table to send as a user's message, with {message_id} and {content}"
        )
    message = opts.template(
        "message", options["message"], MESSAGE_PLACEHOLDERS, ("message_id", "content")
    )

    path = options.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise opts.error("path", path, "a URL path starting with /, such as /ws")

    auth = _parse_auth(opts, opts.table(options, "auth", ""), seen)
    return JsonConfig(
        fields=fields,
        lifecycle=lifecycle,
        message=message,
        error_types=frozenset(error_types) | frozenset(auth.refused_types),
        ignore_types=frozenset(ignore_types) | frozenset(filter(None, [auth.ready_type])),
        auth=auth,
        path=path,
    )


def _parse_auth(opts: _Options, table: Mapping[str, Any], seen: dict[str, str]) -> Auth:
    mode = table.get("mode", "header")
    if mode not in AUTH_MODES:
        raise opts.error("auth.mode", mode, "one of " + ", ".join(AUTH_MODES))
    keys = AUTH_KEYS[mode]
    for key in table:
        if key != "mode" and key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            if close:
                hint = f"did you mean 'auth.{close[0]}'?"
            elif any(key in other for other in AUTH_KEYS.values()):
                hint = f"not used by auth mode {mode!r}" + (
                    "; its keys: " + ", ".join(f"auth.{k}" for k in keys) if keys else ""
                )
            else:
                hint = "known keys: auth.mode" + "".join(f", auth.{k}" for k in keys)
            raise opts.error("adapter option", f"auth.{key}", f"unknown key; {hint}")
    if mode == "header":
        header = table.get("header", "Authorization")
        if not isinstance(header, str) or _HEADER_NAME.fullmatch(header) is None:
            raise opts.error("auth.header", header, "an HTTP header name, such as Authorization")
        value = opts.string_template(
            "auth.value", table.get("value", "Bearer {token}"), AUTH_PLACEHOLDERS
        )
        _needs_token(opts, "auth.value", table.get("value"), value)
        return Auth(mode, header=header, value=value)
    if mode == "query":
        return Auth(mode, param=opts.text("auth.param", table.get("param", "token")))
    if mode == "subprotocol":
        value = opts.string_template("auth.value", table.get("value", "{token}"), AUTH_PLACEHOLDERS)
        _needs_token(opts, "auth.value", table.get("value"), value)
        protocols = opts.names("auth.protocols", table.get("protocols", []))
        return Auth(mode, value=value, protocols=protocols)
    if mode == "first_message":
        if "message" not in table:
            raise opts.missing("auth.message", "the table to send first, with {token}")
        message = opts.template("auth.message", table["message"], AUTH_PLACEHOLDERS, ("token",))
        ready = table.get("ready_type")
        if ready is not None:
            ready = opts.text("auth.ready_type", ready)
            if ready in seen:
                raise opts.error("auth.ready_type", ready, f"{ready!r} is in {seen[ready]} too")
        refused = opts.names("auth.refused_types", table.get("refused_types", []))
        for name in refused:
            if name in seen or name == ready:
                where = seen.get(name, "auth.ready_type")
                raise opts.error("auth.refused_types", list(refused), f"{name!r} is in {where} too")
        if refused and ready is None:
            raise opts.error(
                "auth.refused_types",
                list(refused),
                "needs auth.ready_type: the frame that ends the wait for a refusal",
            )
        timeout = table.get("timeout", DEFAULT_AUTH_TIMEOUT_S)
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 < timeout <= 600
        ):
            raise opts.error("auth.timeout", timeout, "a number of seconds, 0 < timeout <= 600")
        return Auth(
            mode,
            message=message,
            ready_type=ready,
            refused_types=refused,
            timeout_s=float(timeout),
        )
    return Auth(mode)


def _needs_token(opts: _Options, key: str, raw: Any, value: _Fill) -> None:
    if "token" not in value.names:
        raise opts.error(key, raw, "has no {token}; the template must carry the token")


# -- the codec (pure) ----------------------------------------------------------------------------


def _lookup(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if type(obj) is not dict:
            return _MISSING
        obj = obj.get(key, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _clip(value: Any, limit: int = 64) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "…"


class JsonCodec:
    """Frames as a :class:`JsonConfig` describes them: a :class:`~harness.codec.Codec`.

    Pure (no I/O) and never raises on a received frame: anything unexpected is
    :class:`~harness.aep.Malformed` with the reason.
    """

    name = "json"

    def __init__(self, config: JsonConfig) -> None:
        self.config = config
        self.lifecycle = config.lifecycle
        fields = config.fields
        self.owner_tags = "user_id" in fields
        self._type = fields["type"]
        self._message_id = fields["message_id"]
        self._names = {key: ".".join(path) for key, path in fields.items()}
        self._ids = [
            (key, fields[key])
            for key in ("thread_id", "run_id", "user_id", "tenant_id")
            if key in fields
        ]
        self._seq = fields.get("seq")
        self._data = fields.get("data")
        self._error_code = fields.get("error_code")
        self._error_message = fields.get("error_message")
        self._events = frozenset(config.lifecycle.events)
        self._errors = config.error_types
        self._ignored = config.ignore_types
        self._message = config.message

    def encode_message(self, *, message_id: str, thread_id: str, content: str) -> str:
        """The configured ``message`` template, filled (``{canary}`` from the message id)."""
        canary = CANARY_RE.search(message_id) or CANARY_RE.search(content)
        values = {
            "message_id": message_id,
            "thread_id": thread_id,
            "content": content,
            "canary": canary.group(0) if canary else "",
        }
        return self._message.render(values)

    def type_of(self, raw: str, *, binary: bool = False) -> str | None:
        """The frame's type, or ``None`` when it has none (not JSON, no string there)."""
        if binary:
            return None
        obj, _ = decode_json(raw)
        kind = _lookup(obj, self._type)
        return kind if isinstance(kind, str) else None

    def decode(self, raw: str, *, binary: bool = False) -> Frame:
        """Classify one received frame (see the module docstring)."""
        if binary:
            return Malformed("binary frame (the json adapter reads JSON text frames)")
        obj, reason = decode_json(raw)
        if reason is not None:
            return Malformed(reason)
        if type(obj) is not dict:
            return Malformed(f"a JSON {type(obj).__name__}, not an object", obj)
        kind = _lookup(obj, self._type)
        if type(kind) is not str:
            where = self._names["type"]
            if kind is _MISSING:
                return Malformed(f"no type at {where}", obj)
            return Malformed(f"type at {where} is not a string: {_clip(kind)}", obj)
        if kind in self._events:
            return self._event(kind, obj)
        if kind in self._errors:
            return ErrorFrame(
                self._text(obj, self._error_code, kind), self._text(obj, self._error_message, "")
            )
        if kind in self._ignored:
            return Pong()
        return Malformed(f"unknown type {_clip(kind)}", obj)

    def _event(self, kind: str, obj: dict[str, Any]) -> Frame:
        missing: list[str] = []
        wrong: list[str] = []
        message_id = _lookup(obj, self._message_id)
        if message_id is _MISSING:
            missing.append(self._names["message_id"])
        elif type(message_id) is not str:
            wrong.append(self._names["message_id"])
        ids: dict[str, str | None] = {
            "thread_id": "",
            "run_id": None,
            "user_id": None,
            "tenant_id": None,
        }
        for key, path in self._ids:
            value = _lookup(obj, path)
            if value is _MISSING:
                missing.append(self._names[key])
            elif type(value) is str:
                ids[key] = value
            elif type(value) is int:
                ids[key] = str(value)
            else:
                wrong.append(self._names[key])
        seq: int | None = None
        if self._seq is not None:
            value = _lookup(obj, self._seq)
            if value is _MISSING:
                missing.append(self._names["seq"])
            elif type(value) is int:
                seq = value
            else:
                wrong.append(self._names["seq"])
        data: dict[str, Any] = {}
        if self._data is not None:
            value = _lookup(obj, self._data)
            if value is _MISSING:
                missing.append(self._names["data"])
            elif type(value) is dict:
                data = value
            else:
                wrong.append(self._names["data"])
        if missing:
            return Malformed(f"{kind} without {', '.join(missing)}", obj)
        if wrong:
            return Malformed(f"{kind} with mistyped {', '.join(wrong)}", obj)
        assert isinstance(message_id, str)
        return Event(
            type=kind,
            user_id=ids["user_id"],
            tenant_id=ids["tenant_id"],
            thread_id=ids["thread_id"] or "",
            message_id=message_id,
            # Without a run id, a run is the message it answers.
            run_id=ids["run_id"] or message_id,
            seq=seq,
            data=data,
        )

    @staticmethod
    def _text(obj: dict[str, Any], path: tuple[str, ...] | None, default: str) -> str:
        if path is None:
            return default
        value = _lookup(obj, path)
        if value is _MISSING or value is None:
            return default
        return value if isinstance(value, str) else orjson.dumps(value).decode()


# -- the adapter ---------------------------------------------------------------------------------


class JsonAdapter:
    """Connects as the ``[adapter.auth]`` table says; frames through a :class:`JsonCodec`.

    Args:
        config: the validated options.
        connector: opens the WebSocket (``websockets``, the fast client, or the
            in-memory twin in tests).
        ws_url: the WebSocket URL (``config.path`` already applied).
    """

    name = "json"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, config: JsonConfig, connector: Connector, ws_url: str) -> None:
        self.config = config
        self.codec = JsonCodec(config)
        self._connector = connector
        #: The URL connections are opened to.
        self.ws_url = ws_url
        self._target = ws_url.split("?", 1)[0]

    async def open(self, user: SimUser) -> Channel:
        """Open a connection as ``user``; with ``first_message``, authenticate on it.

        Raises:
            AuthRefused: the handshake was refused, or the auth message was
                answered with a refusal (``refused_types``, or a close with
                4401, 4403, 4001, 4003 or 1008).
            ProtocolMismatch: no ``ready_type`` frame within the timeout.
            TargetUnreachable, TargetError: the connection failed otherwise.
        """
        auth = self.config.auth
        values = {"token": user.token, "user": str(user.key.user), "tenant": str(user.key.tenant)}
        if auth.mode == "query":
            return await self._connector.connect(
                self.ws_url, token=user.token, token_in_query=True, query_param=auth.param
            )
        if auth.mode == "header":
            headers = {auth.header: auth.value.render(values)}
            return await self._connector.connect(self.ws_url, token=None, headers=headers)
        if auth.mode == "subprotocol":
            offered = [*auth.protocols, auth.value.render(values)]
            return await self._connector.connect(self.ws_url, token=None, subprotocols=offered)
        channel = await self._connector.connect(self.ws_url, token=None)
        if auth.message is not None:
            try:
                await self._authenticate(channel, auth, auth.message.render(values))
            except BaseException:
                await channel.abort()
                raise
        return channel

    async def _authenticate(self, channel: Channel, auth: Auth, text: str) -> None:
        """Send the auth message; wait for ``ready_type`` (what comes before it is discarded)."""
        try:
            await channel.send(text)
            if auth.ready_type is None:
                return
            async with asyncio.timeout(auth.timeout_s):
                while True:
                    raw, binary = await channel.recv()
                    kind = self.codec.type_of(raw, binary=binary)
                    if kind == auth.ready_type:
                        return  # later frames stay in the channel for the user's reader
                    if kind is not None and kind in auth.refused_types:
                        raise AuthRefused(
                            self._target, f"the auth message was refused: {_clip(raw, 160)}"
                        )
        except TimeoutError:
            raise ProtocolMismatch(
                self._target,
                f"no {auth.ready_type!r} frame within {auth.timeout_s:g}s of the auth message",
            ) from None
        except ChannelClosed as exc:
            if exc.initiator == "server" and exc.code in REFUSAL_CLOSE_CODES:
                raise AuthRefused(
                    self._target,
                    f"the connection was closed after the auth message ({exc.code} {exc.reason})",
                ) from exc
            raise TargetError(
                self._target, f"the connection closed during authentication ({exc})"
            ) from exc

    def memory_probe(self) -> JsonMemoryProbe | None:
        return None

    async def aclose(self) -> None:
        return None


def _with_path(url: str, path: str | None) -> str:
    if path is None:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def create(context: AdapterContext) -> JsonAdapter:
    """The :data:`~harness.adapters.AdapterFactory` of ``adapter = "json"``.

    Raises:
        ConfigError: a mistake in the ``[adapter]`` table (see :func:`parse_options`).
    """
    config = parse_options(context.options, context.options_source)
    connector: Connector
    if context.transport == "fast":
        connector = FastConnector(ssl_context=context.ssl_context)
    else:
        connector = WebSocketConnector(ssl_context=context.ssl_context)
    return JsonAdapter(config, connector, _with_path(context.ws_url, config.path))
