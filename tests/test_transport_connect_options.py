"""Both WebSocket connectors carry credentials however the target wants them.

A bearer header (AEP/1), a query parameter of any name, extra headers, and
subprotocols, against a ``websockets`` server on 127.0.0.1, port 0, that
records each handshake request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from e2e_helpers import seconds
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request
from websockets.typing import Subprotocol

from harness.transport.base import Connector, add_query
from harness.transport.fast import FastConnector
from harness.transport.websocket import WebSocketConnector

CONNECTORS: dict[str, Callable[[], Connector]] = {
    "websockets": WebSocketConnector,
    "fast": FastConnector,
}


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(seconds(10)):
            await test()

    asyncio.run(bounded())


async def handshake(
    connector: Connector,
    connect: Callable[[Connector, str], Awaitable[Any]],
    *,
    subprotocols: list[str] | None = None,
) -> tuple[Request, str | None, str | None]:
    """Connect once; return the server's view of the request, the chosen subprotocol
    (server side) and the one the client saw."""
    requests: list[Request] = []
    chosen: list[str | None] = []

    def record(ws: ServerConnection, request: Request) -> None:
        requests.append(request)

    async def handler(ws: ServerConnection) -> None:
        chosen.append(ws.subprotocol)
        await ws.send(str(ws.subprotocol))
        await ws.wait_closed()

    offer = [Subprotocol(name) for name in subprotocols] if subprotocols else None
    async with serve(
        handler, "127.0.0.1", 0, process_request=record, subprotocols=offer, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        channel = await connect(connector, f"ws://127.0.0.1:{port}/ws")
        client_saw, _ = await channel.recv()
        await channel.close()
    return requests[0], chosen[0], None if client_saw == "None" else client_saw


@pytest.mark.parametrize("kind", CONNECTORS)
def test_the_aep_token_is_a_bearer_header_by_default(kind):
    async def body() -> None:
        request, _, _ = await handshake(
            CONNECTORS[kind](), lambda c, url: c.connect(url, token="t.k-1")
        )
        assert request.headers["Authorization"] == "Bearer t.k-1"
        assert request.path == "/ws"

    run(body)


@pytest.mark.parametrize("kind", CONNECTORS)
def test_a_token_in_the_query_goes_under_the_parameter_name_given(kind):
    async def body() -> None:
        request, _, _ = await handshake(
            CONNECTORS[kind](),
            lambda c, url: c.connect(
                url, token="a b&c", token_in_query=True, query_param="access_token"
            ),
        )
        assert request.path == "/ws?access_token=a%20b%26c"
        assert "Authorization" not in request.headers

    run(body)


@pytest.mark.parametrize("kind", CONNECTORS)
def test_without_a_token_only_the_given_headers_are_sent(kind):
    async def body() -> None:
        request, _, _ = await handshake(
            CONNECTORS[kind](),
            lambda c, url: c.connect(url, token=None, headers={"X-Api-Key": "k1", "X-Org": "o"}),
        )
        assert (request.headers["X-Api-Key"], request.headers["X-Org"]) == ("k1", "o")
        assert "Authorization" not in request.headers
        assert request.path == "/ws"

    run(body)


@pytest.mark.parametrize("kind", CONNECTORS)
def test_subprotocols_are_offered_in_order_and_the_servers_choice_is_accepted(kind):
    async def body() -> None:
        request, chosen, client_saw = await handshake(
            CONNECTORS[kind](),
            lambda c, url: c.connect(url, token=None, subprotocols=["chat.v1", "bearer.tok"]),
            subprotocols=["chat.v1"],
        )
        assert request.headers["Sec-WebSocket-Protocol"] == "chat.v1, bearer.tok"
        assert chosen == client_saw == "chat.v1"

    run(body)


def test_add_query_appends_percent_encoded_parameters():
    assert add_query("ws://h/ws", "token", "a/b") == "ws://h/ws?token=a%2Fb"
    assert add_query("ws://h/ws?v=1", "t k", "x") == "ws://h/ws?v=1&t%20k=x"


def test_frames_left_by_recv_come_first_and_in_order_from_recv_batch():
    """An adapter reads its auth answer with recv(); the user's reader then takes batches."""

    async def burst(ws: ServerConnection) -> None:
        await ws.recv()
        # One write: the four frames arrive in one read, so in one batch.
        ws.protocol.send_text(b"ready")
        for n in range(3):
            ws.protocol.send_text(f"event {n}".encode())
        ws.send_data()
        await ws.wait_closed()

    async def body() -> None:
        async with serve(burst, "127.0.0.1", 0, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            channel = await FastConnector().connect(f"ws://127.0.0.1:{port}/ws", token=None)
            await channel.send("hello")
            assert await channel.recv() == ("ready", False)
            batch = await channel.recv_batch()
            assert batch == [("event 0", False), ("event 1", False), ("event 2", False)]
            await channel.close()

    run(body)
