"""What the harness saw, as typed records, streamed to ``events.jsonl``.

Every frame every connection receives becomes a :class:`Received` record with
the receiving user and connection, a monotonic time (seconds since the run
started) and the wall time, and the raw text. Records are written to disk as
they arrive and flushed at least every ``flush_interval_s`` seconds, so a
killed run keeps what it saw; nothing is kept in memory here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, Protocol

import orjson

from harness.aep import Frame
from harness.types import ConnectionId, ScenarioId, UserKey

RAW_LIMIT = 65536
"""Characters of a frame kept in ``events.jsonl``; longer frames are truncated."""
WRITE_BUFFER_BYTES = 1 << 18
"""The file's write buffer: a write system call per ~700 frames, not per ~20."""
_LINE = orjson.OPT_APPEND_NEWLINE  # a line of events.jsonl, its newline added in the same copy


@dataclass(frozen=True, slots=True)
class Received:
    """A frame one connection received."""

    scenario: ScenarioId
    receiver: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    raw: str
    frame: Frame
    binary: bool = False


class Sent(NamedTuple):
    """A ``user_message`` a user sent on one of its connections.

    A named tuple (one per message sent): built six times faster than a frozen dataclass.
    """

    scenario: ScenarioId
    sender: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    message_id: str
    thread_id: str


@dataclass(frozen=True, slots=True)
class SentFrame:
    """A frame a user sent as it is, not a message: one the target must refuse (AEP/1 §3).

    No run is expected of it; it is recorded so that an error frame which quotes
    it, to its sender or to someone else, can be read next to what was sent.
    """

    scenario: ScenarioId
    sender: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    raw: str


@dataclass(frozen=True, slots=True)
class Opened:
    """A connection was opened (handshake accepted)."""

    scenario: ScenarioId
    user: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection ended. ``runs_in_flight`` counts runs it had started but not seen end.

    ``initiator``: ``client`` (the harness closed it), ``server`` (a close frame
    from the target), ``error`` (lost without a close frame), or ``injected``
    (cut by a network fault the harness itself injected, e.g. its fault proxy).
    """

    scenario: ScenarioId
    user: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    initiator: Literal["client", "server", "error", "injected"]
    code: int | None = None
    reason: str = ""
    runs_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class HttpExchange:
    """One HTTP request a user made and the answer it got."""

    scenario: ScenarioId
    user: UserKey
    method: str
    path: str
    status: int
    body: str
    mono_start: float
    mono_end: float
    wall: float
    purpose: str = ""


@dataclass(frozen=True, slots=True)
class OutsideWrite:
    """A message a user sent where only another's may go, and whether the target took it.

    A broker's adapter publishes into a subject of another user when it opens
    a connection (NATS: ``publish_outside``); a correct target refuses. An
    accepted write is a leak whether or not the other user was listening.

    Attributes:
        writer: the user who sent it (its canary is in the message).
        connection: the writer's connection.
        owner: the user the place belongs to, when it is one user's.
        target: where it was sent (a NATS subject).
        accepted: the target did not refuse it.
        answer: the target's refusal, word for word (``""`` when accepted).
    """

    scenario: ScenarioId
    writer: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    owner: UserKey | None
    target: str
    accepted: bool
    answer: str = ""


Record = Received | Sent | SentFrame | Opened | Closed | HttpExchange | OutsideWrite


class ReceivedBatch(NamedTuple):
    """Frames one connection received in one read of its socket, in order.

    The same facts as one :class:`Received` per frame (:meth:`records` builds
    them), with the time taken once: the frames arrived together. Recorders
    and oracles take a batch to pay their fixed costs once per read, not once
    per frame.
    """

    scenario: ScenarioId
    receiver: UserKey
    connection: ConnectionId
    mono: float
    wall: float
    received: Sequence[tuple[str, bool]]
    """``(raw text, binary)`` of each frame, as the transport delivered it."""
    frames: Sequence[Frame]
    """Each frame decoded by the codec, in the same order."""
    every_event: bool = False
    """Every frame decoded to an :class:`~harness.aep.Event` (``False`` is always safe)."""

    def record(self, index: int) -> Received:
        """The :class:`Received` of frame ``index``."""
        raw, binary = self.received[index]
        frame = self.frames[index]
        return Received(
            self.scenario, self.receiver, self.connection, self.mono, self.wall, raw, frame, binary
        )

    def records(self) -> Iterator[Received]:
        return (self.record(index) for index in range(len(self.received)))


class RecordSink(Protocol):
    """Anything that takes records: the run (which fans out), a list in tests.

    A sink with a ``record_batch(batch: ReceivedBatch)`` method (the run) gets
    each read's frames at once; any other gets one :class:`Received` per frame.
    """

    def record(self, rec: Record) -> None: ...


class Clock:
    """Monotonic seconds since the run started, and wall time."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def mono(self) -> float:
        return time.monotonic() - self.origin

    @staticmethod
    def wall() -> float:
        return time.time()


def _clip(text: str) -> dict[str, Any]:
    if len(text) <= RAW_LIMIT:
        return {"raw": text}
    return {"raw": text[:RAW_LIMIT], "truncated_from": len(text)}


def _connection_line(
    kind: str, rec: SentFrame | Opened | Closed | OutsideWrite, user: UserKey
) -> dict[str, Any]:
    """The fields every line about one connection starts with."""
    return {
        "k": kind,
        "t": rec.wall,
        "m": round(rec.mono, 6),
        "scenario": rec.scenario,
        "user": str(user),
        "conn": rec.connection,
    }


def to_json(rec: Record) -> dict[str, Any]:
    """The ``events.jsonl`` form of a record (one JSON object per line)."""
    if isinstance(rec, Sent):  # the hot path: one per message (received frames come in batches)
        return {
            "k": "sent",
            "t": rec.wall,
            "m": round(rec.mono, 6),
            "scenario": rec.scenario,
            "user": f"{rec.sender.tenant}/{rec.sender.user}",
            "conn": rec.connection,
            "message_id": rec.message_id,
            "thread_id": rec.thread_id,
        }
    if isinstance(rec, Received):
        # The hot path (one per frame): one dict, built in its final key order.
        receiver = rec.receiver
        raw = rec.raw
        line: dict[str, Any] = {
            "k": "recv",
            "t": rec.wall,
            "m": round(rec.mono, 6),
            "scenario": rec.scenario,
            "user": f"{receiver.tenant}/{receiver.user}",
            "conn": rec.connection,
            "raw": raw if len(raw) <= RAW_LIMIT else raw[:RAW_LIMIT],
        }
        if len(raw) > RAW_LIMIT:
            line["truncated_from"] = len(raw)
        if rec.binary:
            line["binary"] = True
        return line
    if isinstance(rec, SentFrame):
        return _connection_line("sent_frame", rec, rec.sender) | _clip(rec.raw)
    if isinstance(rec, Opened):
        return _connection_line("open", rec, rec.user) | {"reconnect": rec.reconnect}
    if isinstance(rec, Closed):
        return _connection_line("close", rec, rec.user) | {
            "initiator": rec.initiator,
            "code": rec.code,
            "reason": rec.reason,
            "runs_in_flight": rec.runs_in_flight,
        }
    if isinstance(rec, OutsideWrite):
        return _connection_line("write", rec, rec.writer) | {
            "owner": None if rec.owner is None else str(rec.owner),
            "target": rec.target,
            "accepted": rec.accepted,
            "answer": rec.answer,
        }
    line = {
        "k": "http",
        "t": rec.wall,
        "m": round(rec.mono_start, 6),
        "m_end": round(rec.mono_end, 6),
        "scenario": rec.scenario,
        "user": str(rec.user),
        "method": rec.method,
        "path": rec.path,
        "status": rec.status,
        "purpose": rec.purpose,
    }
    line |= {"body": _clip(rec.body)["raw"]}
    return line


def received_frames(line: dict[str, Any]) -> list[Any]:
    """The frames of one ``recv`` line of ``events.jsonl``, in the order they arrived.

    A line written for one read holds them all in ``raws``; a line written for
    one frame (binary, truncated, or recorded on its own) holds it in ``raw``.
    Whatever the values are is returned as it is: a reader of a file it did not
    write checks them.
    """
    raws = line.get("raws")
    if isinstance(raws, list):
        return raws
    return [line["raw"]] if "raw" in line else []


class EventLog:
    """Appends records to a JSONL file, flushing at least every ``flush_interval_s``.

    Args:
        path: the file (created, or appended to).
        redact: applied to every line before it is written, so no token or
            secret a service echoes back reaches the disk.
        needs_redaction: an optional cheap test of a line's UTF-8 bytes, true
            for every line that ``redact`` would change (a necessary condition,
            such as "contains a secret's first characters"); lines it clears are
            written as they are, which spares the full redaction pass on nearly
            every frame. It must also hold for any text that contains a text it
            holds for (a substring test does): :meth:`write_batch` asks it once
            about a whole batch of lines. ``None``: every line goes through
            ``redact``.
        flush_interval_s: the most a killed run can lose.
        max_bytes: the most the file may grow by (``None``: no limit). The
            first line that would take it past is not written, nor is any line
            after it: a ``{"k": "capped"}`` line ends the file, and
            :attr:`lines_dropped` counts what was left out. A long soak must
            not fill the disk; what the oracles see does not depend on the file.

    Lines go through a large write buffer; the flush interval, not the
    buffer, bounds what a killed run loses.

    Thread-safe: xdist-free runs write from one event loop, but the soak's
    summary writer may flush from another thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        redact: Callable[[str], str] | None = None,
        needs_redaction: Callable[[bytes], bool] | None = None,
        flush_interval_s: float = 0.2,
        max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self._file: IO[bytes] | None = path.open("ab", buffering=WRITE_BUFFER_BYTES)
        self._redact = redact
        self._needs = needs_redaction
        self._interval = flush_interval_s
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.lines = 0
        self.bytes = 0
        self.lines_dropped = 0

    def write(self, rec: Record) -> None:
        """Append one record."""
        self.write_obj(to_json(rec))

    def write_obj(self, obj: dict[str, Any]) -> None:
        """Append one JSON object as a line."""
        self._write_lines(orjson.dumps(obj, option=_LINE), 1)

    def write_batch(self, batch: ReceivedBatch) -> None:
        """Append ``batch`` as one ``recv`` line whose ``raws`` are its frames, in order.

        A batch with a binary frame or one over :data:`RAW_LIMIT` is written as
        :meth:`write` writes each :class:`Received` instead (one line per frame,
        with ``raw`` and its flags). :func:`received_frames` reads either form.
        """
        received = batch.received
        raws = [raw for raw, binary in received if not binary and len(raw) <= RAW_LIMIT]
        if len(raws) < len(received):
            self._write_lines(
                b"".join(orjson.dumps(to_json(rec), option=_LINE) for rec in batch.records()),
                len(received),
            )
            return
        receiver = batch.receiver
        line = orjson.dumps(
            {
                "k": "recv",
                "t": batch.wall,
                "m": round(batch.mono, 6),
                "scenario": batch.scenario,
                "user": f"{receiver.tenant}/{receiver.user}",
                "conn": batch.connection,
                "raws": raws,
            },
            option=_LINE,
        )
        self._write_lines(line, 1)

    def _write_lines(self, data: bytes, lines: int) -> None:
        """Write whole lines, redacting each the gate does not clear."""
        redact = self._redact
        if redact is not None:
            needs = self._needs
            if needs is None or needs(data):
                data = b"".join(self._redacted(line) for line in data.splitlines())
        with self._lock:
            if self._file is None:
                return
            if self.lines_dropped or (
                self.max_bytes is not None and self.bytes + len(data) > self.max_bytes
            ):
                if not self.lines_dropped:
                    capped = {"k": "capped", "t": time.time(), "max_bytes": self.max_bytes}
                    self._file.write(orjson.dumps(capped, option=_LINE))
                self.lines_dropped += lines
                return
            self._file.write(data)
            self.bytes += len(data)
            self.lines += lines
            now = time.monotonic()
            if now - self._last_flush >= self._interval:
                self._file.flush()
                self._last_flush = now

    def _redacted(self, line: bytes) -> bytes:
        """One line, redacted if the gate does not clear it."""
        assert self._redact is not None
        if self._needs is None or self._needs(line):
            line = self._redact(line.decode()).encode()
        return line + b"\n"

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
