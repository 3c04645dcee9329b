"""The real WebSocket transport, on the ``websockets`` asyncio client."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from harness.errors import AuthRefused, TargetError, TargetUnreachable
from harness.transport.base import Channel, ChannelClosed, place_token

MAX_FRAME_BYTES = 1 << 20
"""Frames over 1 MiB close the connection (1009) instead of filling memory."""


def _closed(exc: ConnectionClosed, *, by_us: bool) -> ChannelClosed:
    if by_us:
        return ChannelClosed(1000, "closed by the harness", "client")
    if exc.rcvd is not None:
        return ChannelClosed(exc.rcvd.code, exc.rcvd.reason, "server")
    if exc.sent is not None:
        # We sent a close frame without having been asked: a protocol error
        # on the target's side (1009 too big, 1007 invalid UTF-8 …).
        return ChannelClosed(exc.sent.code, exc.sent.reason, "error")
    return ChannelClosed(None, "connection lost without a close frame", "error")


class WebSocketChannel:
    """A :class:`~harness.transport.base.Channel` over a websockets connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._closing = False

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise _closed(exc, by_us=self._closing) from exc

    async def recv(self) -> tuple[str, bool]:
        try:
            data = await self._ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc, by_us=self._closing) from exc
        if isinstance(data, str):
            return data, False
        return data.decode("utf-8", "replace"), True

    async def close(self) -> None:
        self._closing = True
        await self._ws.close()

    async def abort(self) -> None:
        self._closing = True
        self._ws.transport.abort()
        await asyncio.sleep(0)


class WebSocketConnector:
    """Opens :class:`WebSocketChannel` s to ``ws://``/``wss://`` URLs.

    Args:
        ssl_context: used for ``wss://`` (verification on by default).
        open_timeout_s: the most a handshake may take.
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
            ws = await connect(
                url,
                additional_headers=sent,
                subprotocols=[Subprotocol(name) for name in subprotocols] or None,
                max_size=MAX_FRAME_BYTES,
                open_timeout=self._timeout,
                ssl=self._ssl if url.startswith("wss:") else None,
                compression=None,
                ping_interval=None,
                close_timeout=2,
                user_agent_header="isoharness",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthRefused(
                    target, f"the WebSocket handshake was refused ({status})"
                ) from exc
            raise TargetError(target, f"the WebSocket handshake answered {status}") from exc
        except InvalidHandshake as exc:
            raise TargetError(target, f"the WebSocket handshake failed: {exc}") from exc
        except TimeoutError as exc:
            raise TargetError(target, f"no WebSocket handshake within {self._timeout}s") from exc
        except OSError as exc:
            raise TargetUnreachable(target, f"cannot connect: {exc.strerror or exc}") from exc
        return WebSocketChannel(ws)
