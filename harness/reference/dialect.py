"""Wire dialects of ``/ws``: AEP/1, and ``renamed``, the same service in other words.

``--dialect renamed`` changes only the WebSocket wire format, so that a
harness adapter configured for other field names can be tested against a real
service with every fault mode (``--fault``) still in place:

* the token is not taken from the handshake but from the first message,
  ``{"op": "hello", "auth": {"bearer": "<token>"}}``, answered
  ``{"kind": "hello.ok", "who": {"uid": <sub>, "org": <tenant>}}``; a bad,
  missing or late (:data:`LOGIN_TIMEOUT_S`) token gets
  ``{"kind": "hello.denied", "why": <text>}`` and a close with 4401;
* a message is ``{"op": "say", "conv": <thread id>, "msg": <message id>,
  "text": <content>}``, a ping ``{"op": "ping"}`` (answered ``{"kind": "pong"}``);
* an event is ``{"kind": <type>, "who": {"uid": <sub>, "org": <tenant>},
  "conv": <thread id>, "msg": <message id>, "run": <run id>, "n": <seq>,
  "body": <data>}`` with the types of :data:`RENAMED_TYPES`;
* an error is ``{"kind": "oops", "code": "bad_request", "detail": <text>}``.

The HTTP API is the same in both dialects.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from harness.reference.protocol import (
    PONG,
    BadFrame,
    ClientFrame,
    decode_frame,
    decode_object,
    encode,
    error_frame,
)

DIALECTS = ("aep", "renamed")
LOGIN_TIMEOUT_S = 10.0
"""How long a ``renamed`` connection may take to send its ``hello``."""
REFUSED_CLOSE_CODE = 4401

#: AEP/1 event type → its name in the ``renamed`` dialect.
RENAMED_TYPES = {
    "agent_started": "run.start",
    "agent_thinking": "run.think",
    "tool_executing": "tool.call",
    "tool_completed": "tool.done",
    "agent_completed": "run.end",
}
#: ``renamed`` client frame field → its AEP/1 name.
_RENAMED_FIELDS = {"conv": "thread_id", "msg": "message_id", "text": "content"}
_RENAMED_OPS = {"say": "user_message", "ping": "ping"}


class Dialect(Protocol):
    """How ``/ws`` frames are written and read.

    Attributes:
        name: ``aep`` or ``renamed``.
        login: whether the token comes in a first message rather than the handshake.
        pong: the answer to a ping.
    """

    name: str
    login: bool
    pong: str

    def encode_event(self, event: dict[str, Any]) -> str:
        """The text of one lifecycle event (given with AEP/1's field names)."""
        ...

    def decode(self, text: str) -> ClientFrame:
        """Decode one client frame; never raises."""
        ...

    def error(self, message: str) -> str:
        """The ``bad_request`` error frame."""
        ...


class Aep:
    """AEP/1 exactly (PROTOCOL.md §3)."""

    name = "aep"
    login = False
    pong = PONG

    def encode_event(self, event: dict[str, Any]) -> str:
        return encode(event)

    def decode(self, text: str) -> ClientFrame:
        return decode_frame(text)

    def error(self, message: str) -> str:
        return error_frame(message)


class Renamed:
    """Every field renamed and nested differently; the token in the first message."""

    name = "renamed"
    login = True
    pong = encode({"kind": "pong"})

    def encode_event(self, event: dict[str, Any]) -> str:
        return encode(
            {
                "kind": RENAMED_TYPES[event["type"]],
                "who": {"uid": event["user_id"], "org": event["tenant_id"]},
                "conv": event["thread_id"],
                "msg": event["message_id"],
                "run": event["run_id"],
                "n": event["seq"],
                "body": event["data"],
            }
        )

    def decode(self, text: str) -> ClientFrame:
        try:
            obj: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            return BadFrame("frame is not valid JSON")
        if not isinstance(obj, dict):
            return BadFrame("frame is not a JSON object")
        op = obj.get("op")
        kind = _RENAMED_OPS.get(op) if isinstance(op, str) else None
        if kind is None:
            return BadFrame(f"unknown op {str(op)[:64]!r}")
        # Checked by the AEP/1 rules, under the AEP/1 names; a complaint uses this dialect's.
        fields = {_RENAMED_FIELDS[k]: v for k, v in obj.items() if k in _RENAMED_FIELDS}
        frame = decode_object({"type": kind, **fields})
        if isinstance(frame, BadFrame):
            reason = frame.reason.replace("user_message", "say")
            for renamed, aep in _RENAMED_FIELDS.items():
                reason = reason.replace(aep, renamed)
            return BadFrame(reason)
        return frame

    def error(self, message: str) -> str:
        return encode({"kind": "oops", "code": "bad_request", "detail": message})

    @staticmethod
    def token_of(text: str) -> str | None:
        """The token of a ``hello`` frame, or ``None`` if it is not one."""
        try:
            obj: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or obj.get("op") != "hello":
            return None
        auth = obj.get("auth")
        token = auth.get("bearer") if isinstance(auth, dict) else None
        return token if isinstance(token, str) and token else None

    @staticmethod
    def ready(tenant: str, sub: str) -> str:
        """The answer to an accepted ``hello``."""
        return encode({"kind": "hello.ok", "who": {"uid": sub, "org": tenant}})

    @staticmethod
    def denied(why: str) -> str:
        """The answer to a refused ``hello`` (the connection is then closed with 4401)."""
        return encode({"kind": "hello.denied", "why": why})


def dialect(name: str) -> Aep | Renamed:
    """The dialect called ``name`` (one of :data:`DIALECTS`)."""
    if name == "renamed":
        return Renamed()
    if name == "aep":
        return Aep()
    raise ValueError(f"unknown dialect {name!r}; valid dialects: {', '.join(DIALECTS)}")
