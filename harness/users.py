"""Simulated users: deterministic identities, canary-carrying messages, live connections.

A simulated user is an ordinary object with awaited methods. Everything
random about it (its faker identity, its locale, the jitter of its schedule)
comes from the run's seed, so a violation's witness names a seed that
reproduces the schedule. Its canary comes from the run key and is not
guessable by the target.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Literal

from faker import Faker

from harness.aep import AEP_CODEC, Event, Frame
from harness.codec import Codec
from harness.recording import (
    Clock,
    Closed,
    Opened,
    Received,
    ReceivedBatch,
    RecordSink,
    Sent,
    SentFrame,
)
from harness.transport.base import Channel, ChannelClosed
from harness.types import ConnectionId, ScenarioId, TenantId, UserId, UserKey

LOCALES = ("en_US", "de_DE", "fr_FR", "ja_JP", "pt_BR", "es_ES", "it_IT", "pl_PL")


@cache
def _faker(locale: str) -> Faker:
    return Faker(locale)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a simulated user pretends to be (reproducible from the seed)."""

    key: UserKey
    name: str
    email: str
    locale: str


def scenario_tag(scenario: str) -> str:
    """A short stable tag for a scenario id, used in user ids (``s04f2a1``)."""
    return f"s{zlib.crc32(scenario.encode()) & 0xFFFFFF:06x}"


def plan_users(*, count: int, tenants: int, run_tag: str, namespace: str) -> list[UserKey]:
    """The users of one scenario: ``count`` users spread round-robin over ``tenants``.

    Within every tenant the subs are ``<namespace>u0``, ``<namespace>u1`` …,
    so the same sub exists in several tenants: AEP/1 §1 makes those different
    users, and a service that keys by sub alone is caught.
    """
    return [
        UserKey(
            TenantId(f"{run_tag}-t{index % tenants}"), UserId(f"{namespace}u{index // tenants}")
        )
        for index in range(count)
    ]


def make_identity(key: UserKey, *, seed: int) -> Identity:
    """A faker identity for ``key``, the same for the same seed."""
    rng = random.Random(f"{seed}:{key}")
    locale = rng.choice(LOCALES)
    fake = _faker(locale)
    fake.seed_instance(rng.getrandbits(32))
    return Identity(key=key, name=fake.name(), email=fake.email(), locale=locale)


class SimUser:
    """One simulated user.

    Args:
        identity: who it is.
        token: its bearer token (never logged).
        canary: its canary; every message id, content, state value and
            thread id it writes carries it.
        rng: its own random source, seeded from the run's seed.
    """

    def __init__(self, identity: Identity, *, token: str, canary: str, rng: random.Random) -> None:
        self.identity = identity
        self.key = identity.key
        self.token = token
        self.canary = canary
        self.rng = rng
        self._messages = 0
        self._bad_frames = 0

    def next_message(self, thread_id: str, *, shared_id: bool = False) -> tuple[str, str]:
        """A new ``(message_id, content)``; both carry the canary.

        With ``shared_id`` the id is ``shared-m<n>``, the one every user gives its
        ``n``-th message: ids are unique among one user's messages only, as they
        are when clients cannot coordinate them (AEP/1 §3, read as thread ids are).
        The content still carries the canary.
        """
        self._messages += 1
        n = self._messages
        message_id = f"shared-m{n}" if shared_id else f"{self.canary}-m{n}"
        content = f"{self.canary} note {n} from {self.identity.name} about {thread_id}"
        return message_id, content

    def next_bad_frame(self) -> tuple[str, str]:
        """The ``(message_id, content)`` of a new frame the target must refuse; both carry
        the canary, so an error that echoes it to someone else is a leak."""
        self._bad_frames += 1
        n = self._bad_frames
        content = f"{self.canary} malformed note {n} from {self.identity.name}"
        return f"{self.canary}-bad{n}", content

    def private_id(self, label: str) -> str:
        """An id (thread id, state key) that only this user uses."""
        return f"{label}-{self.canary}"

    def __repr__(self) -> str:
        return f"SimUser({self.key})"


class PendingRun:
    """A message sent and the end of its run, as seen on the sending connection.

    ``outcome`` is ``None`` while the run is in flight, then ``"completed"``
    or ``"cut"``. The future :attr:`done` and the event :attr:`first_event`
    are made when first asked for (most runs are only ever looked at through
    ``outcome``), already settled if the run got that far.
    """

    __slots__ = (
        "message_id",
        "thread_id",
        "sent_mono",
        "ended_mono",
        "outcome",
        "seen",
        "_done",
        "_first",
    )

    def __init__(self, message_id: str, thread_id: str, sent_mono: float) -> None:
        self.message_id = message_id
        self.thread_id = thread_id
        self.sent_mono = sent_mono
        self.ended_mono: float | None = None
        self.outcome: Literal["completed", "cut"] | None = None
        self.seen = False  # an event of the run arrived
        self._done: asyncio.Future[Literal["completed", "cut"]] | None = None
        self._first: asyncio.Event | None = None

    @property
    def done(self) -> asyncio.Future[Literal["completed", "cut"]]:
        """Resolves with the outcome when the run ends."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            if self.outcome is not None:
                self._done.set_result(self.outcome)
        return self._done

    @property
    def first_event(self) -> asyncio.Event:
        """Set when the run's first event arrives (or when it ends without one)."""
        if self._first is None:
            self._first = asyncio.Event()
            if self.seen or self.outcome is not None:
                self._first.set()
        return self._first

    def _saw_event(self) -> None:
        self.seen = True
        if self._first is not None:
            self._first.set()

    def _end(self, outcome: Literal["completed", "cut"], mono: float) -> None:
        self.outcome = outcome
        self.ended_mono = mono
        if self._done is not None and not self._done.done():
            self._done.set_result(outcome)
        if self._first is not None:
            self._first.set()

    def __repr__(self) -> str:
        return f"PendingRun({self.message_id!r}, {self.outcome or 'in flight'})"


class UserConnection:
    """One open connection of a user, with a reader that records every frame.

    Args:
        user: the owner.
        channel: the open transport channel.
        connection_id: unique within the run.
        scenario: the scenario it belongs to.
        sink: where records go (the run, which writes and checks them).
        clock: the run's clock.
        codec: encodes the messages sent and decodes the frames received; a
            run ends at its lifecycle's terminal event.
        on_run_end: called with each run as it ends (completed or cut), from
            the read path, after its frames are recorded; a closed-loop driver
            sends its next message from here, with no task per message.
    """

    def __init__(
        self,
        user: SimUser,
        channel: Channel,
        *,
        connection_id: ConnectionId,
        scenario: ScenarioId,
        sink: RecordSink,
        clock: Clock,
        reconnect: bool = False,
        drops_injected: bool = False,
        codec: Codec = AEP_CODEC,
        on_run_end: Callable[[PendingRun], None] | None = None,
    ) -> None:
        self.user = user
        self.on_run_end = on_run_end
        self._codec = codec
        self._decode_batch: Callable[[list[tuple[str, bool]]], tuple[list[Frame], bool]]
        self._decode_batch = getattr(codec, "decode_batch", None) or partial(
            _decode_each, codec.decode
        )
        self._terminal = codec.lifecycle.terminal
        self._drops_injected = drops_injected
        self.id = connection_id
        self._channel = channel
        self._scenario = scenario
        self._sink = sink
        self._record_batch: Callable[[ReceivedBatch], None] | None
        self._record_batch = getattr(sink, "record_batch", None)
        self._clock = clock
        self._pending: dict[str, PendingRun] = {}
        self.closed: Closed | None = None
        sink.record(
            Opened(scenario, user.key, connection_id, clock.mono(), clock.wall(), reconnect)
        )
        self._reader = asyncio.create_task(self._read(), name=f"reader-{connection_id}")

    @property
    def in_flight(self) -> int:
        """Runs this connection started whose end it has not seen."""
        return sum(1 for run in self._pending.values() if run.outcome is None)

    async def send_message(self, thread_id: str, *, shared_id: bool = False) -> PendingRun:
        """Send a canary-carrying message in ``thread_id`` (AEP/1: a ``user_message``).

        ``shared_id``: the message id every user gives its message of this rank
        (:meth:`SimUser.next_message`).

        Raises:
            ChannelClosed: the connection is closed (its ``Closed`` is already
                recorded); nothing is sent or recorded.
        """
        run, payload = self._start_run(thread_id, shared_id=shared_id)
        await self._channel.send(payload)
        return run

    async def send_frame(self, text: str) -> None:
        """Send ``text`` as one frame, as it is: not a message, so no run is expected of it.

        It is recorded first, as a :class:`~harness.recording.SentFrame`.

        Raises:
            ChannelClosed: the connection is closed; nothing is sent.
        """
        self._raise_if_closed()
        clock = self._clock
        self._sink.record(
            SentFrame(self._scenario, self.user.key, self.id, clock.mono(), clock.wall(), text)
        )
        await self._channel.send(text)

    def send_message_nowait(self, thread_id: str) -> PendingRun:
        """:meth:`send_message` without waiting: for a caller with one message in flight.

        The frame is written at once where the channel can (``send_nowait``,
        without waiting for the socket to drain: one message in flight per
        connection bounds what is buffered), else by a task.

        Raises:
            ChannelClosed: as :meth:`send_message`.
        """
        run, payload = self._start_run(thread_id)
        send_nowait = getattr(self._channel, "send_nowait", None)
        if send_nowait is not None:
            send_nowait(payload)
        else:
            # A failed send ends the connection: its reader records the Closed and cuts the run.
            task = asyncio.ensure_future(self._channel.send(payload))
            task.add_done_callback(_retrieve)
        return run

    def _raise_if_closed(self) -> None:
        if self.closed is not None:
            initiator = "error" if self.closed.initiator == "injected" else self.closed.initiator
            raise ChannelClosed(self.closed.code, self.closed.reason, initiator)

    def _start_run(self, thread_id: str, *, shared_id: bool = False) -> tuple[PendingRun, str]:
        """Record a new message in ``thread_id`` as sent; return its run and its frame."""
        # A run recorded after its connection's Closed would never be judged
        # cut: the oracle would wait for it and call it lost.
        self._raise_if_closed()
        message_id, content = self.user.next_message(thread_id, shared_id=shared_id)
        clock = self._clock
        now = clock.mono()
        run = PendingRun(message_id, thread_id, now)
        self._pending[message_id] = run
        self._sink.record(
            Sent(self._scenario, self.user.key, self.id, now, clock.wall(), message_id, thread_id)
        )
        payload = self._codec.encode_message(
            message_id=message_id, thread_id=thread_id, content=content
        )
        return run, payload

    async def _read(self) -> None:
        try:
            if getattr(self._channel, "recv_batch", None) is None:
                while True:
                    text, binary = await self._channel.recv()
                    self._received([(text, binary)])
            else:
                # A batch is every frame one read of the socket delivered: one
                # wake-up, one clock reading for all of them (they arrived together).
                recv_batch: Callable[[], Awaitable[list[tuple[str, bool]]]]
                recv_batch = self._channel.recv_batch  # type: ignore[attr-defined]
                deliver_to = getattr(self._channel, "deliver_to", None)
                if deliver_to is not None:
                    # Each read's frames come to _pushed as they arrive; recv_batch
                    # returns what came before, then waits for the end.
                    deliver_to(self._pushed)
                while True:
                    self._received(await recv_batch())
        except ChannelClosed as exc:
            injected = self._drops_injected and exc.initiator == "error"
            self._finish("injected" if injected else exc.initiator, exc.code, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a transport bug must not kill the run
            self._finish("error", None, f"{type(exc).__name__}: {exc}")

    def _pushed(self, frames: list[tuple[str, bool]]) -> None:
        """:meth:`_received` from the channel's read callback: a failure ends the reader."""
        try:
            self._received(frames)
        except Exception as exc:  # noqa: BLE001 - as in _read: a bug must not kill the run
            self._channel.deliver_to(None)  # type: ignore[attr-defined]
            self._reader.cancel()
            self._finish("error", None, f"{type(exc).__name__}: {exc}")

    def _received(self, frames: list[tuple[str, bool]]) -> None:
        """Record frames that arrived together and settle the runs they complete."""
        scenario, user, conn = self._scenario, self.user.key, self.id
        pending, terminal = self._pending, self._terminal
        mono = self._clock.mono()
        wall = self._clock.wall()
        decoded, every_event = self._decode_batch(frames)
        record_batch = self._record_batch
        if record_batch is not None:  # the run: one write and one pass of each oracle
            record_batch(
                ReceivedBatch(scenario, user, conn, mono, wall, frames, decoded, every_event)
            )
        else:
            record = self._sink.record
            for (text, binary), frame in zip(frames, decoded, strict=True):
                record(Received(scenario, user, conn, mono, wall, text, frame, binary))
        message_id, run = None, None  # a read's frames are mostly one run's
        for frame in decoded:
            if type(frame) is Event:
                if frame.message_id != message_id:
                    message_id = frame.message_id
                    run = pending.get(message_id)
                    if run is not None and not run.seen:
                        run._saw_event()
                if run is not None and frame.type == terminal and run.outcome is None:
                    run._end("completed", mono)
                    # Its caller holds the run; a long-lived connection
                    # must not keep every run it ever finished.
                    del pending[message_id]
                    if self.on_run_end is not None:
                        self.on_run_end(run)

    def _finish(
        self,
        initiator: Literal["client", "server", "error", "injected"],
        code: int | None,
        reason: str,
    ) -> None:
        if self.closed is not None:
            return
        mono = self._clock.mono()
        cut = []
        for run in self._pending.values():
            if run.outcome is None:
                cut.append(run)
                run._end("cut", mono)
        self.closed = Closed(
            self._scenario,
            self.user.key,
            self.id,
            mono,
            self._clock.wall(),
            initiator,
            code,
            reason,
            len(cut),
        )
        self._sink.record(self.closed)
        if self.on_run_end is not None:
            for run in cut:
                self.on_run_end(run)

    async def wait_runs(self, timeout_s: float) -> None:
        """Wait until every run this connection started has ended, or ``timeout_s``."""
        pending = [run.done for run in self._pending.values() if run.outcome is None]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def close(self, *, abrupt: bool = False) -> None:
        """Close (or, ``abrupt``, drop) the connection and record it, once."""
        if self.closed is None:
            try:
                await (self._channel.abort() if abrupt else self._channel.close())
            except Exception:  # noqa: BLE001, S110 - closing a broken connection
                pass
            self._finish("client", None if abrupt else 1000, "aborted" if abrupt else "closed")
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass

    def forget(self, message_id: str) -> None:
        """Drop a run from the pending table (its end was seen and handled)."""
        self._pending.pop(message_id, None)


def _decode_each(
    decode: Callable[..., Frame], frames: list[tuple[str, bool]]
) -> tuple[list[Frame], bool]:
    """A codec's ``decode`` applied to every frame (for a codec without ``decode_batch``)."""
    out = [decode(text, binary=binary) for text, binary in frames]
    return out, all(type(frame) is Event for frame in out)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a background send's failure as seen: the reader records the connection's end."""
    if not task.cancelled():
        task.exception()
