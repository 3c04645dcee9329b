"""AEP/1 frames without I/O: build what the client sends, decode what it receives.

Pure functions over text, driven by unit tests with literal frames (the
websockets sans-I/O style): no sockets here, so the same decoding serves the
live transport, the recorder and the oracles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from harness.codec import Lifecycle

LIFECYCLE: tuple[str, ...] = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
"""AEP/1 §3: the five lifecycle events of a run, in order."""

PHASE: dict[str, int] = {name: index for index, name in enumerate(LIFECYCLE)}
REPEATABLE = frozenset({"agent_thinking"})
"""Lifecycle events a run may send more than once (AEP/1 §3: "one or more")."""

EVENT_FIELDS = ("type", "user_id", "tenant_id", "thread_id", "message_id", "run_id", "seq", "data")
PING = '{"type":"ping"}'


def user_message(*, message_id: str, thread_id: str, content: str) -> str:
    """The text of a ``user_message`` frame (AEP/1 §3, client to server)."""
    frame = {
        "type": "user_message",
        "message_id": message_id,
        "thread_id": thread_id,
        "content": content,
    }
    return orjson.dumps(frame).decode()


class Event(NamedTuple):
    """A lifecycle event, every field present and of the right JSON type.

    AEP/1 frames always carry every field. Other protocols' codecs
    (:mod:`harness.codec`) use the same record with what their protocol has:
    ``user_id``/``tenant_id`` ``None`` when events carry no owner tags (the
    oracles then decide on canaries alone), ``seq`` ``None`` when events are
    not numbered (order and duplicates are then judged by type alone).

    A named tuple, not a frozen dataclass: one is made per received frame, and
    a tuple is built six times faster.
    """

    type: str
    user_id: str | None
    tenant_id: str | None
    thread_id: str
    message_id: str
    run_id: str
    seq: int | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a ``ping``."""


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """An ``error`` frame: the service rejected something the client sent."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that is not valid AEP/1; ``reason`` says why, for the evidence."""

    reason: str
    obj: Any = None


Frame = Event | Pong | ErrorFrame | Malformed


def decode_json(raw: str | bytes) -> tuple[Any, str | None]:
    """Parse JSON text; return ``(value, None)`` or ``(None, reason)``."""
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"


def parse_frame(raw: str | bytes, *, binary: bool = False) -> Frame:
    """Decode one server-to-client frame.

    Never raises: anything that is not a well-formed AEP/1 frame becomes
    :class:`Malformed` with the reason, so a target sending garbage is
    recorded as a protocol error rather than crashing the harness.
    """
    if binary:
        return Malformed("binary frame (AEP/1 §3: all frames are UTF-8 JSON text)")
    obj, reason = decode_json(raw)
    if reason is not None:
        return Malformed(reason)
    return parse_object(obj)


_event = tuple.__new__  # Event(...) without the named tuple's Python-level __new__


def decode_batch(frames: Sequence[tuple[str, bool]]) -> tuple[list[Frame], bool]:
    """:func:`parse_frame` every ``(text, binary)`` frame of one read, in order.

    Returns the frames and whether every one of them is an :class:`Event`.
    The common frame, a well-formed event, is checked here in one pass
    (orjson gives exact types); any other goes through :func:`parse_frame`.
    """
    out: list[Frame] = []
    append = out.append
    loads = orjson.loads
    every_event = True
    for raw, binary in frames:
        if not binary:
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is dict:
                try:
                    kind, user, tenant, thread, message, run, seq, data = (
                        obj["type"],
                        obj["user_id"],
                        obj["tenant_id"],
                        obj["thread_id"],
                        obj["message_id"],
                        obj["run_id"],
                        obj["seq"],
                        obj["data"],
                    )
                except KeyError:
                    pass
                else:
                    if (
                        type(kind) is str
                        and kind in PHASE
                        and str is type(user) is type(tenant) is type(thread)
                        and str is type(message) is type(run)
                        and type(seq) is int
                        and type(data) is dict
                    ):
                        append(_event(Event, (kind, user, tenant, thread, message, run, seq, data)))
                        continue
        every_event = False
        append(parse_frame(raw, binary=binary))
    return out, every_event


def parse_object(obj: Any) -> Frame:
    """Classify an already-parsed JSON value (see :func:`parse_frame`)."""
    if not isinstance(obj, dict):
        return Malformed(f"a JSON {type(obj).__name__}, not an object", obj)
    kind = obj.get("type")
    if kind == "pong":
        return Pong()
    if kind == "error":
        return ErrorFrame(str(obj.get("code", "")), str(obj.get("message", "")))
    if not isinstance(kind, str) or kind not in PHASE:
        # Clipped: the reason keys the run's error counts, and a target can put
        # a megabyte (or a new value per frame) in ``type``.
        shown = repr(kind)
        shown = shown if len(shown) <= 64 else shown[:64] + "…"
        return Malformed(f"unknown type {shown}", obj)
    missing = [name for name in EVENT_FIELDS if name not in obj]
    if missing:
        return Malformed(f"{kind} without {', '.join(missing)}", obj)
    strings = ("user_id", "tenant_id", "thread_id", "message_id", "run_id")
    wrong = [name for name in strings if not isinstance(obj[name], str)]
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        wrong.append("seq")
    if not isinstance(obj["data"], dict):
        wrong.append("data")
    if wrong:
        return Malformed(f"{kind} with mistyped {', '.join(wrong)}", obj)
    return Event(
        type=kind,
        user_id=obj["user_id"],
        tenant_id=obj["tenant_id"],
        thread_id=obj["thread_id"],
        message_id=obj["message_id"],
        run_id=obj["run_id"],
        seq=seq,
        data=obj["data"],
    )


AEP_LIFECYCLE = Lifecycle(LIFECYCLE, REPEATABLE)
"""AEP/1 §3 as a :class:`~harness.codec.Lifecycle`."""


@dataclass(frozen=True, slots=True)
class AepCodec:
    """AEP/1 as a :class:`~harness.codec.Codec`: owner tags and ``seq`` on every event."""

    name: str = "aep"
    lifecycle: Lifecycle = AEP_LIFECYCLE
    owner_tags: bool = True
    # The functions themselves, not wrappers: decode runs once per received frame.
    encode_message = staticmethod(user_message)
    decode = staticmethod(parse_frame)
    decode_batch = staticmethod(decode_batch)


AEP_CODEC = AepCodec()
"""The codec of the default adapter (:mod:`harness.adapters.aep`)."""
