"""The fault proxy, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Self

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from harness.errors import UsageError
from harness.faultproxy import FaultProxy, Faults

#: Scales every time limit in this file, for slow machines.
TIME_FACTOR = float(os.environ.get("ISOHARNESS_TEST_TIME_FACTOR", "1"))


def run(test: Callable[[], Coroutine[Any, Any, None]], limit_s: float = 10.0) -> None:
    """Run ``test`` in a fresh event loop, failing it if it hangs."""

    async def guarded() -> None:
        async with asyncio.timeout(limit_s * TIME_FACTOR):
            await test()

    asyncio.run(guarded())


class EchoServer:
    """A TCP server that echoes every byte, and closes its side when the client does."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        except OSError:
            pass
        finally:
            writer.transport.abort()
            self._handlers.discard(task)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def client(proxy: FaultProxy) -> Any:
    """A raw TCP connection to the proxy, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    """Send ``data``, read its echo, and return the seconds that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(data)
    await writer.drain()
    assert await reader.readexactly(len(data)) == data
    return loop.time() - start


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, BaseException | None]:
    """Everything read until EOF or a connection error, and that error (None at EOF)."""
    received = bytearray()
    try:
        async with asyncio.timeout(2 * TIME_FACTOR):
            while chunk := await reader.read(65536):
                received += chunk
    except OSError as exc:
        return bytes(received), exc
    return bytes(received), None


async def is_silent(reader: asyncio.StreamReader, seconds: float = 0.2) -> bool:
    """True if nothing arrives on ``reader`` for ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await reader.read(1)
    except TimeoutError:
        return True
    return False


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (over counters the proxy updates) until it holds, for at most 2 s."""
    for _ in range(int(200 * TIME_FACTOR)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition still false after 2 s")


# -- passthrough ----------------------------------------------------------------------------


def test_forwards_bytes_both_ways_unchanged_and_passes_half_close() -> None:
    payload = random.Random(0).randbytes(1_000_000)

    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with client(proxy) as (reader, writer):

                async def send() -> None:
                    writer.write(payload)
                    await writer.drain()
                    writer.write_eof()

                sender = asyncio.create_task(send())
                received, error = await read_until_closed(reader)
                await sender
            assert (received, error) == (payload, None)
            stats = proxy.stats
            assert (stats.accepted, stats.bytes_upstream, stats.bytes_downstream) == (
                1,
                len(payload),
                len(payload),
            )
            await eventually(lambda: proxy.stats.active == 0)

    run(test)


def test_websocket_session_through_proxy() -> None:
    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def test() -> None:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with FaultProxy("127.0.0.1", port) as proxy:
                proxy.set_faults(downstream=Faults(delay_s=0.01, jitter_s=0.01))
                async with connect(proxy.url("ws", "/events")) as ws:
                    messages: list[str | bytes] = ["hello", b"\x00\xffbinary", "x" * 100_000]
                    for message in messages:
                        await ws.send(message)
                        assert await ws.recv() == message
                assert proxy.stats.accepted == 1

    run(test)


# -- latency and bandwidth ---------------------------------------------------------------


def test_delay_adds_latency_in_each_direction() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.set_faults(upstream=Faults(delay_s=0.1), downstream=Faults(delay_s=0.1))
            async with client(proxy) as (reader, writer):
                elapsed = await round_trip(reader, writer, b"ping")
            assert 0.19 <= elapsed < 1.5 * TIME_FACTOR

    run(test)


def test_jitter_never_reorders_bytes() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port, seed=3) as proxy:
            proxy.set_faults(upstream=Faults(jitter_s=0.02), downstream=Faults(jitter_s=0.02))
            async with client(proxy) as (reader, writer):
                lines = [f"{i:04d}\n".encode() for i in range(40)]
                for line in lines:
                    writer.write(line)
                    await writer.drain()
                    await asyncio.sleep(0.002)  # separate chunks, each with its own jitter
                assert await reader.readexactly(5 * len(lines)) == b"".join(lines)

    run(test)


def test_bandwidth_limit_slows_transfer() -> None:
    size, rate = 40_000, 200_000  # 0.2 s at the limit; milliseconds without it

    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.set_faults(downstream=Faults(bandwidth_bytes_per_s=rate))
            async with client(proxy) as (reader, writer):
                elapsed = await round_trip(reader, writer, bytes(size))
            assert 0.15 <= elapsed < 3 * TIME_FACTOR

    run(test)


# -- resets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
def test_reset_after_bytes_forwards_at_most_that_many_then_resets(direction: str) -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.set_faults(**{direction: Faults(reset_after_bytes=10)})
            async with client(proxy) as (reader, writer):
                writer.write(bytes(100))
                received, error = await read_until_closed(reader)
            assert isinstance(error, ConnectionResetError)
            assert len(received) <= 10
            stats = proxy.stats
            assert stats.reset == 1
            assert getattr(stats, f"bytes_{direction}") == 10
            await eventually(lambda: proxy.stats.active == 0)

    run(test)


def test_reset_all_resets_every_live_connection_and_keeps_listening() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with contextlib.AsyncExitStack() as stack:
                conns = [await stack.enter_async_context(client(proxy)) for _ in range(3)]
                for reader, writer in conns:
                    await round_trip(reader, writer, b"hi")
                assert await proxy.reset_all() == 3
                for reader, _ in conns:
                    _, error = await read_until_closed(reader)
                    assert isinstance(error, ConnectionResetError)
            await eventually(lambda: proxy.stats.active == 0)
            assert proxy.stats.reset == 3
            async with client(proxy) as (reader, writer):
                await round_trip(reader, writer, b"again")
            await eventually(lambda: proxy.stats.active == 0)
            assert await proxy.reset_all() == 0

    run(test)


def test_reset_all_breaks_websockets_and_clients_can_reconnect() -> None:
    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def test() -> None:
        async with serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with FaultProxy("127.0.0.1", port) as proxy:
                for _ in range(3):  # a small reconnect storm
                    async with connect(proxy.url("ws")) as ws:
                        await ws.send("before")
                        assert await ws.recv() == "before"
                        assert await proxy.reset_all() == 1
                        with pytest.raises(ConnectionClosedError):
                            await ws.recv()
                assert proxy.stats.reset == 3

    run(test)


# -- refusing and black-holing ---------------------------------------------------------


def test_refuse_new_resets_new_connections_without_contacting_target() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with client(proxy) as (live_reader, live_writer):
                await round_trip(live_reader, live_writer, b"live")
                proxy.refuse_new(True)
                async with client(proxy) as (reader, _):
                    received, error = await read_until_closed(reader)
                assert (received, type(error)) == (b"", ConnectionResetError)
                await round_trip(live_reader, live_writer, b"still live")
            assert (echo.connections, proxy.stats.refused, proxy.stats.accepted) == (1, 1, 2)
            proxy.refuse_new(False)
            async with client(proxy) as (reader, writer):
                await round_trip(reader, writer, b"welcome back")

    run(test)


def test_blackhole_holds_new_connections_silent_until_lifted() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.blackhole(True)
            async with client(proxy) as (reader, writer):
                writer.write(b"anyone there?")
                assert await is_silent(reader)
                assert (echo.connections, proxy.stats.active) == (0, 1)
                proxy.blackhole(False)
                assert await reader.readexactly(13) == b"anyone there?"

    run(test)


def test_blackhole_silences_live_connections() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with client(proxy) as (reader, writer):
                await round_trip(reader, writer, b"one")
                proxy.blackhole(True)
                writer.write(b"two")
                assert await is_silent(reader)
                assert echo.received == 3
                proxy.blackhole(False)
                assert await reader.readexactly(3) == b"two"

    run(test)


# -- live changes, stalls and determinism ---------------------------------------------


def test_set_faults_applies_to_live_connections() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with client(proxy) as (reader, writer):
                assert await round_trip(reader, writer, b"a") < 0.1
                proxy.set_faults(downstream=Faults(delay_s=0.2))
                assert await round_trip(reader, writer, b"b") >= 0.19
                proxy.set_faults(upstream=Faults(delay_s=0.1))  # downstream unchanged
                assert proxy.faults("downstream") == Faults(delay_s=0.2)
                assert await round_trip(reader, writer, b"c") >= 0.29
                proxy.set_faults(upstream=Faults(), downstream=Faults())
                assert await round_trip(reader, writer, b"d") < 0.1

    run(test)


def test_drop_stalls_the_direction_until_faults_change() -> None:
    async def test() -> None:
        async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port) as proxy:
            async with client(proxy) as (reader, writer):
                proxy.set_faults(upstream=Faults(drop_rate=1.0))
                writer.write(b"held")
                assert await is_silent(reader)
                assert echo.received == 0
                proxy.set_faults(upstream=Faults())
                assert await reader.readexactly(4) == b"held"

    run(test)


async def stalled_connections(seed: int, count: int) -> list[int]:
    """Which of ``count`` connections stall on their first chunk at drop_rate 0.5."""
    async with EchoServer() as echo, FaultProxy("127.0.0.1", echo.port, seed=seed) as proxy:
        proxy.set_faults(upstream=Faults(drop_rate=0.5))
        async with contextlib.AsyncExitStack() as stack:
            conns = []
            for _ in range(count):
                conns.append(await stack.enter_async_context(client(proxy)))
                # the ordinal is given at accept: accept one before opening the next
                await eventually(lambda: proxy.stats.accepted == len(conns))
            for _, writer in conns:
                writer.write(b"x")
            silent = await asyncio.gather(*(is_silent(reader, 0.3) for reader, _ in conns))
            return [i for i, stalled in enumerate(silent) if stalled]


def test_seed_decides_which_connections_stall() -> None:
    async def test() -> None:
        first = await stalled_connections(seed=1, count=8)
        assert 0 < len(first) < 8
        assert await stalled_connections(seed=1, count=8) == first
        assert await stalled_connections(seed=2, count=8) != first

    run(test)


# -- failures and misuse -----------------------------------------------------------------


def test_unreachable_target_resets_client_promptly() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]

    async def test() -> None:
        async with FaultProxy("127.0.0.1", dead_port) as proxy:
            async with client(proxy) as (reader, _):
                received, error = await read_until_closed(reader)
            assert (received, type(error)) == (b"", ConnectionResetError)
            assert (proxy.stats.upstream_failures, proxy.stats.active) == (1, 0)

    run(test)


def test_non_loopback_listen_host_is_refused() -> None:
    with pytest.raises(UsageError) as info:
        FaultProxy("127.0.0.1", 80, listen_host="0.0.0.0")
    assert str(info.value) == (
        "listen_host '0.0.0.0' is not a loopback address; the fault proxy listens on "
        "loopback only: use '127.0.0.1' or '::1'"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay_s": -1}, "Faults delay_s=-1 is invalid; use a finite number of seconds >= 0"),
        (
            {"jitter_s": float("inf")},
            "Faults jitter_s=inf is invalid; use a finite number of seconds >= 0",
        ),
        ({"drop_rate": 1.5}, "Faults drop_rate=1.5 is invalid; use a probability in [0, 1]"),
        (
            {"bandwidth_bytes_per_s": 0},
            "Faults bandwidth_bytes_per_s=0 is invalid; "
            "use bytes per second >= 1, or None for no limit",
        ),
        (
            {"reset_after_bytes": -5},
            "Faults reset_after_bytes=-5 is invalid; use a byte count >= 0, or None for no reset",
        ),
    ],
)
def test_faults_rejects_values_out_of_range(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        Faults(**options)
    assert str(info.value) == message


def test_port_before_start_and_second_start_are_usage_errors() -> None:
    proxy = FaultProxy("127.0.0.1", 80)
    with pytest.raises(UsageError, match=r"no port before start\(\)"):
        _ = proxy.port

    async def test() -> None:
        async with proxy:
            assert proxy.url() == f"http://127.0.0.1:{proxy.port}"
            with pytest.raises(UsageError, match=r"start\(\) was called twice"):
                await proxy.start()

    run(test)


def test_aclose_drops_connections_and_leaves_no_tasks() -> None:
    async def test() -> None:
        async with EchoServer() as echo:
            proxy = FaultProxy("127.0.0.1", echo.port)
            await proxy.start()
            async with client(proxy) as (a_reader, a_writer), contextlib.AsyncExitStack() as stack:
                await round_trip(a_reader, a_writer, b"active")
                proxy.set_faults(downstream=Faults(delay_s=5))
                a_writer.write(b"in flight")
                proxy.blackhole(True)
                b_reader, _ = await stack.enter_async_context(client(proxy))
                await eventually(lambda: proxy.stats.active == 2)
                await proxy.aclose()
                assert proxy.stats.active == 0
                assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("faultproxy")]
                for reader in (a_reader, b_reader):
                    received, _ = await read_until_closed(reader)
                    assert received == b""
                await proxy.aclose()  # idempotent

    run(test)
