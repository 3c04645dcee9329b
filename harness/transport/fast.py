"""The fast WebSocket transport: websockets' sans-I/O client driven by an ``asyncio.Protocol``.

:mod:`harness.transport.websocket` runs websockets' asyncio client, which
costs a coroutine step, a queue hand-off and a future per frame. Here the
event loop reads the socket into a buffer the pump lends it
(:meth:`_Pump.buffer_updated`) and the pump takes every complete frame in
it: websockets' :class:`~websockets.client.ClientProtocol` (the same state
machine, bytes in, frames out) does the handshake, control frames,
fragments and every protocol error, while the common frame (a whole,
unmasked text or binary frame) is read by the pump itself. The messages
are queued as ``(text, binary)`` and the one waiting reader is woken once:
:meth:`FastChannel.recv_batch` hands the reader the whole queue, so a read
buffer of fifty frames costs one wake-up, not fifty.

The contract is the :class:`~harness.transport.base.Channel` protocol, with
the error mapping of :mod:`harness.transport.websocket`: frames over
:data:`MAX_FRAME_BYTES` close the connection with 1009, invalid UTF-8 with
1007, no compression is offered, ``wss://`` uses the given
:class:`ssl.SSLContext`.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Event, State
from websockets.typing import BytesLike, Subprotocol
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from harness.errors import AuthRefused, TargetError, TargetUnreachable
from harness.transport.base import Channel, ChannelClosed, place_token

MAX_FRAME_BYTES = 1 << 20
"""Messages over 1 MiB close the connection (1009) instead of filling memory."""
CLOSE_TIMEOUT_S = 2.0
"""How long the target may take to drop TCP after the close handshake (then we abort)."""
MAX_QUEUED_FRAMES = 4096
"""Frames queued for a reader that is behind; beyond this the socket is not read."""
RECEIVE_BUFFER_BYTES = 1 << 18
"""What one read of a socket may take (asyncio's own read size)."""

_OPEN = State.OPEN
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_HEADERS_END = b"\r\n\r\n"


class _ReceiveBuffer(threading.local):
    """The buffer a thread's sockets are read into (a selector loop's ``get_buffer``
    → ``recv_into`` → ``buffer_updated`` never yields in between, so one per thread
    serves every connection; what a read leaves of a frame is copied out).

    Reading into it, not into a new ``bytes`` of the transport's read size,
    spares three system calls per read (the allocation's ``mmap``, the shrink's
    ``mremap``, the ``munmap``).
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECEIVE_BUFFER_BYTES))


class _MaskKeys(threading.local):
    """Masking keys from the OS's CSPRNG, drawn 4 KiB at a time, not one system call a frame.

    RFC 6455 §5.3: the key is "derived from a strong source of entropy"; every
    key is used once.
    """

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0

    def next(self) -> bytes:
        at = self.at
        if at >= len(self.pool):
            self.pool, at = os.urandom(4096), 0
        self.at = at + 4
        return self.pool[at : at + 4]


_receive_buffer = _ReceiveBuffer()
_mask_keys = _MaskKeys()


class _Pump(asyncio.BufferedProtocol):
    """Moves bytes between the socket and the sans-I/O protocol; queues whole messages.

    Once the handshake has succeeded, the pump reads the common frame itself:
    a whole (FIN) text or binary frame, unmasked, no reserved bits, within the
    size limit, outside a fragmented message. Every other frame (control,
    fragment, anything invalid) is handed to websockets whole, so its parser
    is always at a frame boundary when it gets one; after a close frame or a
    failure websockets gets everything (it discards what follows).
    """

    def __init__(self, ws: ClientProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.frames: list[tuple[str, bool]] = []
        # Set: each read's frames go to it at once, not to the queue (FastChannel.deliver_to).
        self.receiver: Callable[[list[tuple[str, bool]]], None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.ended: ChannelClosed | None = None
        self.by_us = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.fragments: list[BytesLike] = []
        self.fragment_binary = False
        self.abort_timer: asyncio.TimerHandle | None = None
        self.head = bytearray()  # the handshake response so far, to find its end
        self.own_frames = False  # True: the pump parses data frames itself
        self.partial = bytearray()  # the start of a frame not yet complete
        self.eof = False
        self.max_size = MAX_FRAME_BYTES if ws.max_message_size is None else ws.max_message_size
        # A loop that may fill buffers concurrently (the proactor) gets one per connection.
        shared = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
        self.view = _receive_buffer.view if shared else memoryview(bytearray(1 << 16))

    # -- asyncio.BufferedProtocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()  # the handshake request, queued by the connector

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        view = self.view
        if not self.own_frames:
            self.data_received(bytes(view[:nbytes]))
            return
        partial = self.partial
        if partial:
            partial += view[:nbytes]
            del partial[: self._parse(partial, len(partial))]
        else:
            used = self._parse(view, nbytes)
            if used < nbytes:
                partial += view[used:nbytes]
        self._settle()

    def data_received(self, data: bytes) -> None:
        """Bytes while websockets parses everything: the handshake, and after a close."""
        ws = self.ws
        rest = b""
        if not self.handshake.done() and ws.handshake_exc is None:
            # Give websockets the response up to the end of its headers and no
            # more: a 101 has no body, so what follows is frames, for the pump.
            start = max(0, len(self.head) - 3)
            self.head += data
            end = self.head.find(_HEADERS_END, start)
            if end >= 0:
                cut = end + 4 - (len(self.head) - len(data))
                data, rest = data[:cut], data[cut:]
                self.head = bytearray()
        ws.receive_data(data)
        events = ws.events_received()
        self.flush()  # pongs, close echoes
        if not self.handshake.done():
            events = self._handshake(events)
            if ws.handshake_exc is not None or not self.handshake.done():
                if rest:  # a refusal's body
                    ws.receive_data(rest)
                    self._handshake(ws.events_received())
                    self.flush()
                return  # refused, or the response is not complete yet
            self.own_frames = ws.state is _OPEN and not events
            if not self.own_frames and rest:
                ws.receive_data(rest)
                events += ws.events_received()
                self.flush()
            elif rest:
                used = self._parse(rest, len(rest))
                self.partial += rest[used:]
        self._take(events)
        self._settle()

    def _parse(self, buf: bytes | bytearray | memoryview, n: int) -> int:
        """Queue every complete frame in ``buf[:n]``; return how many bytes were used.

        RFC 6455 §5.2: byte 0 is FIN, RSV1-3 and the opcode, byte 1 the MASK bit
        and the length (126: a 16-bit length follows, 127: a 64-bit one); a
        server's frames are never masked.
        """
        append = self.frames.append
        max_size = self.max_size
        ws = self.ws
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length >= 126:
                if length == 126:
                    if n - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start += 2
                else:
                    if n - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    start += 8
            if b1 & 0x80:
                start += 4  # masked: invalid from a server, websockets fails it
            end = start + length
            if (b0 == 0x81 or b0 == 0x82) and b1 < 0x80 and length <= max_size:
                if ws.current_size is None:  # not inside a fragmented message
                    if end > n:
                        break
                    payload = buf[start:end]
                    if b0 == 0x82:
                        append((str(payload, "utf-8", "replace"), True))
                    else:
                        try:
                            append((str(payload, "utf-8"), False))
                        except UnicodeDecodeError as exc:
                            # As websockets' asyncio client does: fail the connection with 1007.
                            ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                            return self._hand_over(buf, end, n)
                    pos = end
                    continue
            if length > max_size:
                # websockets fails it (1009) from the header alone: no need to buffer it.
                return self._hand_over(buf, pos, n)
            if end > n:
                break
            # Control frames, fragments, reserved bits, bad opcodes: websockets' job.
            ws.receive_data(bytes(buf[pos:end]))
            self._take(ws.events_received())
            pos = end
            if ws.close_rcvd is not None or ws.parser_exc is not None or ws.state is not _OPEN:
                return self._hand_over(buf, pos, n)
        return pos

    def _hand_over(self, buf: bytes | bytearray | memoryview, pos: int, n: int) -> int:
        """From ``buf[pos:n]`` on, websockets parses (after a close frame or a failure)."""
        self.own_frames = False
        ws = self.ws
        if pos < n:
            ws.receive_data(bytes(buf[pos:n]))
            self._take(ws.events_received())
        return n

    def _take(self, events: list[Event]) -> None:
        """Queue the messages among frames websockets parsed."""
        frames = self.frames
        ws = self.ws
        payload: BytesLike
        for frame in cast(list[Frame], events):
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if not frame.fin:
                    self.fragments = [frame.data]
                    self.fragment_binary = opcode is _BINARY
                    continue
                payload = frame.data
            elif opcode is _CONT:
                self.fragments.append(frame.data)
                if not frame.fin:
                    continue
                payload = b"".join(self.fragments)
                self.fragments = []
                opcode = _BINARY if self.fragment_binary else _TEXT
            else:  # ping (the protocol answers it), pong, close (read from the state)
                continue
            # The parser hands out bytes or bytearray, never a memoryview.
            if opcode is _BINARY:
                frames.append((payload.decode("utf-8", "replace"), True))  # type: ignore[union-attr]
                continue
            try:
                frames.append((payload.decode(), False))  # type: ignore[union-attr]
            except UnicodeDecodeError as exc:
                # As websockets' asyncio client does: fail the connection with 1007.
                ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self.own_frames = False
                break

    def _settle(self) -> None:
        """After a read: send what websockets queued, note the end, wake the reader."""
        self.flush()  # pongs, close echoes, a close after a failure
        if self.ws.state is not _OPEN:
            self._end()
        elif len(self.frames) >= MAX_QUEUED_FRAMES and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def send_text(self, data: bytes) -> None:
        """Write one text frame (RFC 6455 §5.2), masked with a fresh key as a client's is (§5.3).

        websockets' ``send_text`` draws each key with a system call; the state
        checks are the caller's (the connection is OPEN, and no message is ever
        sent fragmented).
        """
        self.flush()  # whatever websockets queued goes first
        length = len(data)
        if length < 126:
            head = bytes((0x81, 0x80 | length))
        elif length < 65536:
            head = bytes((0x81, 0xFE)) + length.to_bytes(2, "big")
        else:
            head = bytes((0x81, 0xFF)) + length.to_bytes(8, "big")
        key = _mask_keys.next()
        assert self.transport is not None
        self.transport.write(head + key + apply_mask(data, key))

    def _give_partial(self) -> None:
        """At EOF: websockets gets an incomplete last frame (for its error message)."""
        if self.partial and not self.eof:
            data, self.partial = bytes(self.partial), bytearray()
            self.ws.receive_data(data)

    def eof_received(self) -> None:
        self._give_partial()
        self.eof = True
        self.ws.receive_eof()
        events = self.ws.events_received()
        self.flush()
        if events and not self.handshake.done():
            self._handshake(events)
        # Returning None lets the transport close itself: nothing is written after EOF.

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_partial()
        self.eof = True
        self.ws.receive_eof()  # idempotent; the protocol is CLOSED after it
        events = self.ws.events_received()
        if not self.handshake.done():
            self._handshake(events)
            if not self.handshake.done():
                reason = exc or ConnectionResetError("connection closed during the handshake")
                self.handshake.set_exception(reason)
        self._end()
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- plumbing ------------------------------------------------------------------------------

    def _handshake(self, events: list[Event]) -> list[Event]:
        """Settle the handshake from the first events; return the frames after the response."""
        for index, event in enumerate(events):
            if isinstance(event, Response):
                error = self.ws.handshake_exc
                if error is None:
                    self.handshake.set_result(None)
                else:
                    self.handshake.set_exception(error)
                return events[index + 1 :]
        if self.ws.handshake_exc is not None:
            self.handshake.set_exception(self.ws.handshake_exc)
        return events

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if not self.ws.writes and self.ws.state is _OPEN:
            return  # the common case, after every read and before every send: nothing to do
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):  # pragma: no cover - racing a reset
                    pass
            else:
                transport.close()
        if self.abort_timer is None and self.ws.close_expected() and not self.lost.done():
            # The target has this long to drop TCP after the close handshake.
            self.abort_timer = self.loop.call_later(CLOSE_TIMEOUT_S, transport.abort)

    def _end(self) -> None:
        if self.ended is not None:
            return
        ws = self.ws
        if self.by_us:
            self.ended = ChannelClosed(1000, "closed by the harness", "client")
        elif ws.close_rcvd is not None:
            self.ended = ChannelClosed(ws.close_rcvd.code, ws.close_rcvd.reason, "server")
        elif ws.close_sent is not None:
            # We sent a close frame without having been asked: a protocol error on
            # the target's side (1009 too big, 1007 invalid UTF-8 …).
            self.ended = ChannelClosed(ws.close_sent.code, ws.close_sent.reason, "error")
        else:
            self.ended = ChannelClosed(None, "connection lost without a close frame", "error")

    def _wake(self) -> None:
        receiver = self.receiver
        if receiver is not None and self.frames:
            batch, self.frames = self.frames, []
            receiver(batch)
        # The reader waits for frames or the end; nothing else is worth a wake-up.
        waiter = self.waiter
        if waiter is not None and not waiter.done() and (self.frames or self.ended is not None):
            waiter.set_result(None)

    def closed_error(self) -> ChannelClosed:
        """A fresh exception for the end of this connection (raised once per caller)."""
        ended = self.ended
        if ended is None or self.by_us:
            return ChannelClosed(1000, "closed by the harness", "client")
        return ChannelClosed(ended.code, ended.reason, ended.initiator)

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()


class FastChannel:
    """A :class:`~harness.transport.base.Channel` over a :class:`_Pump`, with a batch read."""

    __slots__ = ("_pump", "_ready")

    def __init__(self, pump: _Pump) -> None:
        self._pump = pump
        self._ready: list[tuple[str, bool]] = []  # the rest of a batch, for recv()

    async def recv_batch(self) -> list[tuple[str, bool]]:
        """Every frame received and not yet read, at least one; waits for one if none.

        Raises:
            ChannelClosed: the connection ended and every frame was read.
        """
        if self._ready:
            # recv() keeps the rest of its batch reversed (it pops from the end).
            batch, self._ready = self._ready[::-1], []
            return batch
        pump = self._pump
        while not pump.frames:
            if pump.ended is not None:
                raise pump.closed_error()
            waiter = pump.waiter = pump.loop.create_future()
            try:
                await waiter
            finally:
                pump.waiter = None
        batch, pump.frames = pump.frames, []
        if pump.reading_paused:
            pump.resume()
        return batch

    async def recv(self) -> tuple[str, bool]:
        if not self._ready:
            self._ready = await self.recv_batch()
            self._ready.reverse()
        return self._ready.pop()

    async def send(self, text: str) -> None:
        pump = self._pump
        if pump.ended is not None or pump.ws.state is not _OPEN:
            raise pump.closed_error()
        pump.send_text(text.encode())
        if pump.writing_paused:
            waiter = pump.loop.create_future()
            pump.drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                pump.drain_waiters.remove(waiter)
            if pump.lost.done() and pump.ended is not None:
                raise pump.closed_error()

    def deliver_to(self, receiver: Callable[[list[tuple[str, bool]]], None] | None) -> None:
        """Hand each read's frames to ``receiver`` as they arrive (``None``: queue them again).

        ``receiver`` runs in the protocol callback, once per read of the socket,
        and must not raise. Frames queued before are still returned by
        :meth:`recv_batch`, which otherwise only waits for the end and raises
        :class:`ChannelClosed`: a reader without a wake-up per read.
        """
        self._pump.receiver = receiver

    def send_nowait(self, text: str) -> None:
        """Write ``text`` at once, without waiting for the socket to drain.

        For a caller that bounds what it has in flight (one message per
        connection in a closed loop).

        Raises:
            ChannelClosed: the connection has ended.
        """
        pump = self._pump
        if pump.ended is not None or pump.ws.state is not _OPEN:
            raise pump.closed_error()
        pump.send_text(text.encode())

    async def close(self) -> None:
        pump = self._pump
        pump.by_us = True
        if pump.ws.state is _OPEN:
            pump.ws.send_close(CloseCode.NORMAL_CLOSURE)
            pump.flush()
        if pump.lost.done():
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(pump.lost)
        except TimeoutError:
            if pump.transport is not None:
                pump.transport.abort()
            await asyncio.shield(pump.lost)

    async def abort(self) -> None:
        pump = self._pump
        pump.by_us = True
        if pump.transport is not None:
            pump.transport.abort()
        await asyncio.sleep(0)


class FastConnector:
    """Opens :class:`FastChannel` s to ``ws://``/``wss://`` URLs.

    Args:
        ssl_context: used for ``wss://`` (verification on by default).
        open_timeout_s: the most a TCP connect plus handshake may take.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, open_timeout_s: float = 10.0
    ) -> None:
        self._ssl = ssl_context
        self._timeout = open_timeout_s

    async def connect(
        self,
        url: str,
        *,
        token: str | None,
        token_in_query: bool = False,
        query_param: str = "token",
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] = (),
    ) -> Channel:
        url, sent = place_token(
            url, token, in_query=token_in_query, query_param=query_param, headers=headers
        )
        target = url.split("?", 1)[0]
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise TargetError(target, f"not a WebSocket URL: {exc}") from exc
        # No extensions offered: no permessage-deflate (frames stay cheap to read).
        ws = ClientProtocol(
            uri,
            subprotocols=[Subprotocol(name) for name in subprotocols] or None,
            max_size=MAX_FRAME_BYTES,
        )
        request = ws.connect()
        for name, value in sent.items():
            request.headers[name] = value
        request.headers["User-Agent"] = "isoharness"
        ws.send_request(request)
        loop = asyncio.get_running_loop()
        context = (self._ssl or ssl.create_default_context()) if uri.secure else None
        pump: _Pump | None = None

        def factory() -> _Pump:
            nonlocal pump
            pump = _Pump(ws, loop)
            return pump

        try:
            async with asyncio.timeout(self._timeout):
                await loop.create_connection(
                    factory,
                    uri.host,
                    uri.port,
                    ssl=context,
                    server_hostname=uri.host if context is not None else None,
                )
                assert pump is not None
                await pump.handshake
        except InvalidStatus as exc:
            await _discard(pump)
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthRefused(
                    target, f"the WebSocket handshake was refused ({status})"
                ) from exc
            raise TargetError(target, f"the WebSocket handshake answered {status}") from exc
        except InvalidHandshake as exc:
            await _discard(pump)
            raise TargetError(target, f"the WebSocket handshake failed: {exc}") from exc
        except TimeoutError as exc:
            await _discard(pump)
            raise TargetError(target, f"no WebSocket handshake within {self._timeout}s") from exc
        except OSError as exc:
            await _discard(pump)
            raise TargetUnreachable(target, f"cannot connect: {exc.strerror or exc}") from exc
        except BaseException:
            await _discard(pump)
            raise
        return FastChannel(pump)


async def _discard(pump: _Pump | None) -> None:
    """Drop a connection whose handshake failed, and wait until the socket is released."""
    if pump is None or pump.transport is None:
        return
    pump.by_us = True
    pump.transport.abort()
    await asyncio.shield(pump.lost)
