"""An in-memory transport twin: users and probes tested without a server.

A test gives :class:`MemoryConnector` an async handler that plays the
server: it gets a :class:`ServerSide` per connection (``recv``/``send``/
``close``) and the token the client presented.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

from harness.errors import AuthRefused
from harness.transport.base import Channel, ChannelClosed, add_query

_EOF = object()


class _Pipe:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed: ChannelClosed | None = None


class ServerSide:
    """The server's end of an in-memory connection."""

    def __init__(
        self,
        to_client: _Pipe,
        to_server: _Pipe,
        token: str,
        *,
        url: str = "",
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] = (),
    ) -> None:
        self._out = to_client
        self._in = to_server
        #: The bearer token (header or query), or "" when the client sent none.
        self.token = token
        #: The URL, query included, the client connected to.
        self.url = url
        #: The extra handshake headers and the offered subprotocols.
        self.headers = dict(headers or {})
        self.subprotocols = tuple(subprotocols)

    async def send(self, text: str, *, binary: bool = False) -> None:
        await self._out.queue.put((text, binary))

    async def recv(self) -> str | None:
        """The client's next frame, or ``None`` once the client has closed."""
        item = await self._in.queue.get()
        return None if item is _EOF else str(item)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._out.closed = ChannelClosed(code, reason, "server")
        await self._out.queue.put(_EOF)


class MemoryChannel:
    """The client's end: a :class:`~harness.transport.base.Channel`."""

    def __init__(self, to_client: _Pipe, to_server: _Pipe) -> None:
        self._in = to_client
        self._out = to_server

    async def send(self, text: str) -> None:
        if self._in.closed is not None:
            raise self._in.closed
        await self._out.queue.put(text)

    async def recv(self) -> tuple[str, bool]:
        if self._in.closed is not None and self._in.queue.empty():
            raise self._in.closed
        item = await self._in.queue.get()
        if item is _EOF:
            assert self._in.closed is not None
            raise self._in.closed
        assert isinstance(item, tuple)
        return str(item[0]), bool(item[1])

    async def _end(self, initiator: Literal["client", "error"]) -> None:
        if self._in.closed is None:
            self._in.closed = ChannelClosed(1000, "closed by the harness", "client")
            await self._in.queue.put(_EOF)
            await self._out.queue.put(_EOF)
        del initiator

    async def close(self) -> None:
        await self._end("client")

    async def abort(self) -> None:
        await self._end("error")


Handler = Callable[[ServerSide], Coroutine[Any, Any, None]]


class MemoryConnector:
    """A :class:`~harness.transport.base.Connector` whose server is ``handler``.

    Args:
        handler: runs once per connection, as its own task.
        accept: decides, from the token, whether the handshake succeeds.
    """

    def __init__(self, handler: Handler, *, accept: Callable[[str], bool] = bool) -> None:
        self._handler = handler
        self._accept = accept
        self.tasks: list[asyncio.Task[None]] = []

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
        # ``accept`` judges a bearer token; credentials carried otherwise are the handler's.
        if token is not None and not self._accept(token):
            raise AuthRefused(url, "the WebSocket handshake was refused (401)")
        if token is not None and token_in_query:
            url = add_query(url, query_param, token)
        to_client, to_server = _Pipe(), _Pipe()
        server = ServerSide(
            to_client,
            to_server,
            token or "",
            url=url,
            headers=headers,
            subprotocols=subprotocols,
        )
        self.tasks.append(asyncio.create_task(self._handler(server)))
        return MemoryChannel(to_client, to_server)
