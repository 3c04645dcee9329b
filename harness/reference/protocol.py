"""AEP/1 wire rules with no I/O: limits, key syntax, client frame decoding.

Decisions where the protocol leaves room (AEP/1 §2, §3):

- Thread ids follow the key rule (1–128 characters of ``[A-Za-z0-9._:-]``)
  everywhere, so every thread a message creates can be read back through
  ``/api/threads/{thread_id}``. A ``user_message`` whose ``thread_id`` breaks
  the rule is a bad frame.
- ``message_id`` is any non-empty string (the 64 KiB frame limit bounds it);
  the service does not enforce uniqueness: a repeated id is another message.
- A field of the wrong JSON type counts as missing. Unknown extra fields are
  ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CONTENT_BYTES = 16 * 1024
MAX_FRAME_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024

_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def valid_key(key: str) -> bool:
    """Whether ``key`` is a legal state key or thread id (AEP/1 §2)."""
    return _KEY.fullmatch(key) is not None


@dataclass(frozen=True, slots=True)
class Ping:
    """A ``ping`` frame, answered with ``pong``."""


@dataclass(frozen=True, slots=True)
class UserMessage:
    """An accepted-shape ``user_message`` frame."""

    message_id: str
    thread_id: str
    content: str


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame the service must answer with a ``bad_request`` error."""

    reason: str


ClientFrame = Ping | UserMessage | BadFrame


def decode_frame(text: str) -> ClientFrame:
    """Decode one text frame from a client; never raises."""
    try:
        obj: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return BadFrame("frame is not valid JSON")
    return decode_object(obj)


def decode_object(obj: Any) -> ClientFrame:
    """Decode an already-parsed client frame (see :func:`decode_frame`)."""
    if not isinstance(obj, dict):
        return BadFrame("frame is not a JSON object")
    kind = obj.get("type")
    if kind == "ping":
        return Ping()
    if kind != "user_message":
        return BadFrame(f"unknown frame type {str(kind)[:64]!r}")
    message_id, thread_id, content = obj.get("message_id"), obj.get("thread_id"), obj.get("content")
    if not isinstance(message_id, str):
        return BadFrame("user_message needs a string field 'message_id'")
    if not isinstance(thread_id, str):
        return BadFrame("user_message needs a string field 'thread_id'")
    if not isinstance(content, str):
        return BadFrame("user_message needs a string field 'content'")
    if not message_id:
        return BadFrame("message_id is empty")
    if not thread_id:
        return BadFrame("thread_id is empty")
    if not valid_key(thread_id):
        return BadFrame("thread_id must be 1-128 characters of [A-Za-z0-9._:-]")
    if len(content.encode()) > MAX_CONTENT_BYTES:
        return BadFrame(f"content is over {MAX_CONTENT_BYTES} bytes of UTF-8")
    return UserMessage(message_id=message_id, thread_id=thread_id, content=content)


def encode(obj: dict[str, Any]) -> str:
    """Serialise one server frame."""
    return orjson.dumps(obj).decode()


PONG = encode({"type": "pong"})


def error_frame(message: str) -> str:
    """The ``bad_request`` error frame (AEP/1 §3)."""
    return encode({"type": "error", "code": "bad_request", "message": message})


class ErrorReporter:
    """Writes the message of a bad frame's error: the reason, and nothing of any request.

    AEP/1 §4: nothing of user A's is ever visible to user B, and an error frame
    goes to the connection whose frame was bad, so its message speaks of that
    frame only.
    """

    def accepted(self, text: str) -> None:
        """A frame was accepted as a message (this reporter keeps nothing of it)."""

    def message(self, reason: str) -> str:
        """The error message of a frame refused for ``reason``."""
        return reason
