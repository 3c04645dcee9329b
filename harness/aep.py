"""AEP/1 frames without I/O: build what the client sends, decode what it receives.

Pure functions over text, driven by unit tests with literal frames (the
websockets sans-I/O style): no sockets here, so the same decoding serves the
live transport, the recorder and the oracles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
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
CLOSE_UNAUTHORIZED = 4401
"""The close code of an accepted WebSocket whose token is not valid (§1)."""


def user_message(*, message_id: str, thread_id: str, content: str) -> str:
    """The text of a ``user_message`` frame (AEP/1 §3, client to server)."""
    frame = {
        "type": "user_message",
        "message_id": message_id,
        "thread_id": thread_id,
        "content": content,
    }
    return orjson.dumps(frame).decode()


BAD_FRAME_KINDS = ("missing_thread_id", "unknown_type")
"""The kinds of :func:`bad_frame`."""


def bad_frame(kind: str, *, message_id: str, thread_id: str, content: str) -> str:
    """The text of a client frame AEP/1 §3 makes a bad frame, carrying ``content``.

    ``missing_thread_id``: a ``user_message`` without its ``thread_id``;
    ``unknown_type``: a frame of the unknown type ``user_note`` with every
    ``user_message`` field. A conforming service answers either with
    ``{"type": "error", "code": "bad_request", "message": ...}``, keeps the
    connection open, and starts no run.

    Raises:
        ValueError: ``kind`` is not one of :data:`BAD_FRAME_KINDS`.
    """
    frame: dict[str, str]
    if kind == "missing_thread_id":
        frame = {"type": "user_message", "message_id": message_id, "content": content}
    elif kind == "unknown_type":
        frame = {
            "type": "user_note",
            "message_id": message_id,
            "thread_id": thread_id,
            "content": content,
        }
    else:
        kinds = ", ".join(BAD_FRAME_KINDS)
        raise ValueError(f"unknown bad frame kind {kind!r}; use one of: {kinds}")
    return orjson.dumps(frame).decode()


class Event(msgspec.Struct, frozen=True, gc=False):
    """A lifecycle event, every field present and of the right JSON type.

    AEP/1 frames always carry every field. Other protocols' codecs
    (:mod:`harness.codec`) use the same record with what their protocol has:
    ``user_id``/``tenant_id`` ``None`` when events carry no owner tags (the
    oracles then decide on canaries alone), ``seq`` ``None`` when events are
    not numbered (order and duplicates are then judged by type alone).

    A ``msgspec`` struct: one is made per received frame, and :func:`decode_batch`
    decodes and type-checks a frame straight into one, in C. Immutable; a copy
    with other fields is ``msgspec.structs.replace(event, …)``. Not tracked by
    the garbage collector (a decoded frame's ``data`` holds no cycles).
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


_decode_any = msgspec.json.decode
_REFUSED = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)
"""What msgspec raises for text it will not decode (a lone surrogate in a ``str``
cannot even be encoded)."""


def decode_json(raw: str | bytes) -> tuple[Any, str | None]:
    """Parse JSON text; return ``(value, None)`` or ``(None, reason)``.

    ``msgspec`` decodes, as it does the common frame in :func:`decode_batch`,
    so a frame has one value on either path (integers of any size are exact).
    What it refuses, orjson tries, and orjson's message is the reason: it says
    where the text went wrong, and it takes nesting down to its own limit
    rather than the interpreter's recursion limit.
    """
    try:
        return _decode_any(raw), None
    except _REFUSED:
        pass
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"


_decode_event = msgspec.json.Decoder(Event).decode


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


def decode_batch(frames: Sequence[tuple[str, bool]]) -> tuple[list[Frame], bool]:
    """:func:`parse_frame` every ``(text, binary)`` frame of one read, in order.

    Returns the frames and whether every one of them is an :class:`Event`.
    The common frame, a well-formed event, is decoded and type-checked in one
    call (``msgspec``, into an :class:`Event`); any frame that call refuses or
    that is not a well-formed AEP/1 event goes through :func:`parse_frame`,
    which has the last word and gives the reason. The two agree on every
    frame the fast path accepts: ``tests/test_aep.py`` holds them to it.
    """
    out: list[Frame] = []
    append = out.append
    every_event = True
    for raw, binary in frames:
        if not binary:
            try:
                event = _decode_event(raw)
            except _REFUSED:
                pass
            else:
                if (
                    event.type in PHASE
                    and event.user_id is not None
                    and event.tenant_id is not None
                    and event.seq is not None
                ):
                    append(event)
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
