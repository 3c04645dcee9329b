"""The fast WebSocket transport: websockets' sans-I/O client driven by an ``asyncio.Protocol``.

:mod:`harness.transport.websocket` runs websockets' asyncio client, which
costs a coroutine step, a queue hand-off and a future per frame. Here the
event loop calls :meth:`_Pump.data_received` with everything the socket had;
websockets' :class:`~websockets.client.ClientProtocol` (the same state
machine, bytes in, frames out) parses every complete frame in it, the text
frames are decoded and queued as ``(text, binary)``, and the one waiting
reader is woken once. :meth:`FastChannel.recv_batch` hands the reader the
whole queue, so a read buffer of fifty frames costs one wake-up, not fifty.

The contract is the :class:`~harness.transport.base.Channel` protocol, with
the error mapping of :mod:`harness.transport.websocket`: frames over
:data:`MAX_FRAME_BYTES` close the connection with 1009, invalid UTF-8 with
1007, no compression is offered, ``wss://`` uses the given
:class:`ssl.SSLContext`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import quote

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Event, State
from websockets.typing import BytesLike
from websockets.uri import parse_uri

from harness.errors import AuthRefused, TargetError, TargetUnreachable
from harness.transport.base import Channel, ChannelClosed

MAX_FRAME_BYTES = 1 << 20
"""Messages over 1 MiB close the connection (1009) instead of filling memory."""
CLOSE_TIMEOUT_S = 2.0
"""How long the target may take to drop TCP after the close handshake (then we abort)."""
MAX_QUEUED_FRAMES = 4096
"""Frames queued for a reader that is behind; beyond this the socket is not read."""

_OPEN = State.OPEN
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT


class _Pump(asyncio.Protocol):
    """Moves bytes between the socket and the sans-I/O protocol; queues whole messages."""

    def __init__(self, ws: ClientProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.ws = ws
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.frames: list[tuple[str, bool]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.ended: ChannelClosed | None = None
        self.by_us = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.fragments: list[BytesLike] = []
        self.fragment_binary = False
        self.abort_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()  # the handshake request, queued by the connector

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        self.flush()  # pongs, close echoes
        if not self.handshake.done():
            events = self._handshake(events)
            if ws.handshake_exc is not None or not self.handshake.done():
                return  # refused, or the response is not complete yet
        frames = self.frames
        append = frames.append
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
                append((payload.decode("utf-8", "replace"), True))  # type: ignore[union-attr]
                continue
            try:
                append((payload.decode(), False))  # type: ignore[union-attr]
            except UnicodeDecodeError as exc:
                # As websockets' asyncio client does: fail the connection with 1007.
                ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self.flush()
                break
        if ws.state is not _OPEN:
            self._end()
        elif len(frames) >= MAX_QUEUED_FRAMES and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        events = self.ws.events_received()
        self.flush()
        if events and not self.handshake.done():
            self._handshake(events)
        # Returning None lets the transport close itself: nothing is written after EOF.

    def connection_lost(self, exc: Exception | None) -> None:
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
        waiter = self.waiter
        if waiter is not None and not waiter.done():
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
            batch, self._ready = self._ready, []
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
        pump.ws.send_text(text.encode())
        pump.flush()
        if pump.writing_paused:
            waiter = pump.loop.create_future()
            pump.drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                pump.drain_waiters.remove(waiter)
            if pump.lost.done() and pump.ended is not None:
                raise pump.closed_error()

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

    async def connect(self, url: str, *, token: str, token_in_query: bool = False) -> Channel:
        if token_in_query:
            url += ("&" if "?" in url else "?") + "token=" + quote(token, safe="")
        target = url.split("?", 1)[0]
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise TargetError(target, f"not a WebSocket URL: {exc}") from exc
        # No extensions offered: no permessage-deflate (frames stay cheap to read).
        ws = ClientProtocol(uri, max_size=MAX_FRAME_BYTES)
        request = ws.connect()
        if not token_in_query:
            request.headers["Authorization"] = f"Bearer {token}"
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
