"""The fast transport behaves as the websockets one: real servers on 127.0.0.1, port 0.

Every test runs its own event loop (``asyncio.run``) against a ``websockets``
server in the same loop, or, end to end, against the reference service in
its own process. Unclosed transports would fail the run (filterwarnings=error).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import SECRET, seconds
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from harness.adapters import AdapterContext
from harness.adapters.aep import aep_via
from harness.credentials import JwtCredentials
from harness.embedded import EmbeddedService
from harness.errors import AuthRefused, TargetError, TargetUnreachable
from harness.recording import received_frames
from harness.run import Run, Target
from harness.scenario import Scenario, Sizes, Wiring
from harness.transport.base import ChannelClosed
from harness.transport.fast import MAX_FRAME_BYTES, FastChannel, FastConnector
from harness.transport.http import AiohttpClient
from harness.types import ViolationKind

Handler = Callable[[ServerConnection], Awaitable[None]]


def run(test: Callable[[], Coroutine[Any, Any, None]], limit_s: float = 10.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(seconds(limit_s)):
            await test()

    asyncio.run(bounded())


async def with_server(
    handler: Handler,
    body: Callable[[str], Awaitable[None]],
    *,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
) -> None:
    """Run ``body(url)`` against a websockets server on a free loopback port."""
    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await body(f"ws://127.0.0.1:{port}/ws")


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def open_channel(url: str, **kwargs: Any) -> FastChannel:
    channel = await FastConnector(open_timeout_s=seconds(2)).connect(url, token="t0k3n", **kwargs)
    assert isinstance(channel, FastChannel)
    return channel


async def read_all(channel: FastChannel) -> tuple[list[tuple[str, bool]], ChannelClosed]:
    """Every frame until the channel ends, and how it ended."""
    frames: list[tuple[str, bool]] = []
    while True:
        try:
            frames += await channel.recv_batch()
        except ChannelClosed as end:
            return frames, end


def test_echo_in_both_directions() -> None:
    async def body(url: str) -> None:
        channel = await open_channel(url)
        await channel.send('{"type":"ping"}')
        assert await channel.recv() == ('{"type":"ping"}', False)
        await channel.send("héllo ✓")
        assert await channel.recv_batch() == [("héllo ✓", False)]
        await channel.close()

    run(lambda: with_server(echo, body))


def test_frames_that_arrive_together_are_read_in_one_batch() -> None:
    async def burst(ws: ServerConnection) -> None:
        await ws.recv()
        # One write of fifty frames: the client reads them in few batches.
        ws.protocol.send_text(b"0")
        for n in range(1, 50):
            ws.protocol.send_text(str(n).encode())
        ws.send_data()
        await ws.wait_closed()

    async def body(url: str) -> None:
        channel = await open_channel(url)
        await channel.send("go")
        batches: list[list[tuple[str, bool]]] = []
        while sum(map(len, batches)) < 50:
            batches.append(await channel.recv_batch())
        assert [text for batch in batches for text, _ in batch] == [str(n) for n in range(50)]
        assert max(map(len, batches)) > 1
        await channel.close()

    run(lambda: with_server(burst, body))


def test_recv_hands_out_a_batch_one_frame_at_a_time_in_order() -> None:
    async def three(ws: ServerConnection) -> None:
        for text in ("a", "b", "c"):
            await ws.send(text)
        await ws.close(1000, "done")

    async def body(url: str) -> None:
        channel = await open_channel(url)
        got = [await channel.recv() for _ in range(3)]
        assert got == [("a", False), ("b", False), ("c", False)]
        with pytest.raises(ChannelClosed) as end:
            await channel.recv()
        assert (end.value.code, end.value.reason, end.value.initiator) == (1000, "done", "server")
        await channel.close()

    run(lambda: with_server(three, body))


def test_binary_frames_are_decoded_with_replacement_and_flagged() -> None:
    async def binary(ws: ServerConnection) -> None:
        await ws.send(b"ok \xff")
        await ws.send([b"frag", b"mented"])  # a fragmented binary message
        await ws.send(["frag", "mented ✓"])  # a fragmented text message
        await ws.wait_closed()

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames: list[tuple[str, bool]] = []
        while len(frames) < 3:
            frames += await channel.recv_batch()
        assert frames == [("ok \ufffd", True), ("fragmented", True), ("fragmented ✓", False)]
        await channel.close()

    run(lambda: with_server(binary, body))


def test_a_frame_over_the_limit_closes_the_connection_with_1009() -> None:
    closed: list[int | None] = []

    async def huge(ws: ServerConnection) -> None:
        await ws.send("before")
        await ws.send("x" * (MAX_FRAME_BYTES + 1))
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            closed.append(exc.rcvd.code if exc.rcvd else None)

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("before", False)]
        assert (end.code, end.initiator) == (1009, "error")
        assert "1048577" in end.reason
        await channel.close()

    run(lambda: with_server(huge, body))
    assert closed == [1009]


def test_invalid_utf8_in_a_text_frame_closes_the_connection_with_1007() -> None:
    async def invalid(ws: ServerConnection) -> None:
        ws.protocol.send_text(b"bad \xff")
        ws.send_data()
        await ws.wait_closed()

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == []
        assert (end.code, end.initiator) == (1007, "error")
        await channel.close()

    run(lambda: with_server(invalid, body))


def test_a_close_by_the_server_carries_its_code_and_reason() -> None:
    async def closer(ws: ServerConnection) -> None:
        await ws.send("last words")
        await ws.close(4401, "token expired")

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("last words", False)]
        assert (end.code, end.reason, end.initiator) == (4401, "token expired", "server")
        with pytest.raises(ChannelClosed) as again:
            await channel.send("too late")
        assert again.value.initiator == "server"
        await channel.close()

    run(lambda: with_server(closer, body))


def test_a_connection_lost_without_a_close_frame_is_an_error() -> None:
    async def vanish(ws: ServerConnection) -> None:
        await ws.send("hello")
        ws.transport.abort()

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("hello", False)]
        assert (end.code, end.reason, end.initiator) == (
            None,
            "connection lost without a close frame",
            "error",
        )
        await channel.close()

    run(lambda: with_server(vanish, body))


def test_close_by_the_client_is_a_1000_handshake() -> None:
    seen: list[tuple[int, str] | None] = []

    async def watch(ws: ServerConnection) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None)

    async def body(url: str) -> None:
        channel = await open_channel(url)
        reader = asyncio.create_task(read_all(channel))
        await asyncio.sleep(0.01)
        await channel.close()
        frames, end = await reader
        assert frames == []
        assert (end.code, end.initiator) == (1000, "client")
        with pytest.raises(ChannelClosed) as again:
            await channel.send("after close")
        assert again.value.initiator == "client"
        await channel.close()  # twice is harmless

    run(lambda: with_server(watch, body))
    assert seen == [(1000, "")]


def test_abort_drops_the_connection_without_a_close_frame() -> None:
    seen: list[object] = []

    async def watch(ws: ServerConnection) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.append(exc.rcvd)

    async def body(url: str) -> None:
        channel = await open_channel(url)
        reader = asyncio.create_task(read_all(channel))
        await asyncio.sleep(0.01)
        await channel.abort()
        _, end = await reader
        assert end.initiator == "client"
        await channel.close()

    run(lambda: with_server(watch, body))
    assert seen == [None]


def test_the_token_goes_in_the_header_or_in_the_query() -> None:
    seen: list[tuple[str | None, str]] = []

    def check(ws: ServerConnection, request: Request) -> Response | None:
        seen.append((request.headers.get("Authorization"), request.path))
        return None

    async def body(url: str) -> None:
        for in_query in (False, True):
            channel = await open_channel(url, token_in_query=in_query)
            await channel.close()

    run(lambda: with_server(echo, body, process_request=check))
    assert seen == [("Bearer t0k3n", "/ws"), (None, "/ws?token=t0k3n")]


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (HTTPStatus.UNAUTHORIZED, AuthRefused, "the WebSocket handshake was refused (401)"),
        (HTTPStatus.FORBIDDEN, AuthRefused, "the WebSocket handshake was refused (403)"),
        (HTTPStatus.INTERNAL_SERVER_ERROR, TargetError, "the WebSocket handshake answered 500"),
    ],
)
def test_a_refused_handshake_is_mapped_like_the_websockets_transport(
    status: HTTPStatus, error: type[TargetError], message: str
) -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response:
        return ws.respond(status, '{"error": "unauthorized"}\n')

    async def body(url: str) -> None:
        with pytest.raises(error) as refused:
            await open_channel(url)
        assert type(refused.value) is error
        assert refused.value.reason == message

    run(lambda: with_server(echo, body, process_request=refuse))


def test_a_refused_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def body() -> None:
        with pytest.raises(TargetUnreachable) as unreachable:
            await open_channel(f"ws://127.0.0.1:{port}/ws")
        assert unreachable.value.reason.startswith("cannot connect: ")

    run(body)


def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    accepted: list[asyncio.BaseTransport] = []

    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            connector = FastConnector(open_timeout_s=0.2)
            with pytest.raises(TargetError) as silent:
                await connector.connect(f"ws://127.0.0.1:{port}/ws", token="t")
            assert silent.value.reason == "no WebSocket handshake within 0.2s"
        finally:
            for transport in accepted:
                transport.close()
            server.close()
            await server.wait_closed()

    run(body)


# -- end to end: the harness's users on the fast transport ------------------------------------


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, EmbeddedService]]:
    with (
        EmbeddedService(jwt_secret=SECRET, think_ms=(0, 2)) as clean,
        EmbeddedService(jwt_secret=SECRET, think_ms=(1, 4), faults=["singleton_emitter"]) as bad,
    ):
        yield {"clean": clean, "singleton_emitter": bad}


def chat_scenario(service: EmbeddedService, report_dir: Path) -> Scenario:
    run_ = Run(
        target=Target(service.url, service.url.replace("http", "ws", 1) + "/ws", embedded=True),
        report_dir=report_dir,
        seed=11,
        run_key=b"fast-transport-run-key-32-bytes!",
        run_id="20260101T000000Z-f4s7tr",
        lifecycle_timeout_s=5.0,
    )
    wiring = Wiring(
        context=AdapterContext(base_url=service.url, ws_url=run_.target.ws_url),
        adapter=aep_via(lambda: FastConnector(open_timeout_s=seconds(5))),
        http=AiohttpClient,
        credentials=JwtCredentials(SECRET),
    )
    sizes = Sizes(users=6, tenants=2, connections_per_user=2, messages_per_user=4)
    return Scenario(run_, "test_transport_fast", sizes=sizes, wiring=wiring)


def test_a_chat_over_the_fast_transport_passes_on_the_clean_service(
    services: dict[str, EmbeddedService], tmp_path: Path
) -> None:
    harness = chat_scenario(services["clean"], tmp_path)
    try:
        harness.conditions("overlapping_runs")
        users = harness.users()
        assert harness.chat(users) == 24
        harness.verify()
        run_ = harness.run
        assert run_.counts["events_received"] >= 24 * 2 * 5  # two connections per user
        assert run_.counts["connections"] == 12
        assert not run_.errors
        run_.log.flush()
        assert run_.log.lines == run_.log.path.read_bytes().count(b"\n")
    finally:
        harness.run.close()


def test_a_chat_over_the_fast_transport_finds_the_singleton_emitter_leak(
    services: dict[str, EmbeddedService], tmp_path: Path
) -> None:
    harness = chat_scenario(services["singleton_emitter"], tmp_path)
    try:
        users = harness.users()
        harness.chat(users, messages=6)
        assert harness.run.finding_counts[str(ViolationKind.CROSS_DELIVERY)] > 0
    finally:
        harness.run.close()


def test_a_closed_loop_over_the_fast_transport_completes_and_judges_every_run(
    services: dict[str, EmbeddedService], tmp_path: Path
) -> None:
    harness = chat_scenario(services["clean"], tmp_path)
    try:
        users = harness.users()
        assert harness.closed_loop(users, messages=5) == 30
        harness.verify()
        run_ = harness.run
        assert run_.counts["messages_sent"] == 30
        assert run_.runs_completed == 30  # every run judged whole while its connection was open
        assert run_.runs_cut == run_.runs_abandoned == 0
        assert run_.counts["connections"] == 6  # one per user
        assert not run_.errors
        run_.log.flush()
        lines = [orjson.loads(line) for line in run_.log.path.read_bytes().splitlines()]
        received = [raw for line in lines if line["k"] == "recv" for raw in received_frames(line)]
        assert len(received) == run_.counts["events_received"]
        assert sum(1 for line in lines if line["k"] == "sent") == 30
    finally:
        harness.run.close()


def test_a_closed_loop_over_the_fast_transport_finds_the_singleton_emitter_leak(
    services: dict[str, EmbeddedService], tmp_path: Path
) -> None:
    harness = chat_scenario(services["singleton_emitter"], tmp_path)
    try:
        harness.closed_loop(harness.users(), messages=6)
        assert harness.run.finding_counts[str(ViolationKind.CROSS_DELIVERY)] > 0
        with pytest.raises(AssertionError, match="cross_delivery"):
            harness.verify()
    finally:
        harness.run.close()


# -- the pump's own frame parser, against a scripted server --------------------------------------


def frame(first: int, payload: bytes, *, mask: bytes | None = None) -> bytes:
    """A server frame: RFC 6455 §5.2, byte 0 given (FIN, RSV, opcode), any length form."""
    length = len(payload)
    if length < 126:
        head = bytes((first, length))
    elif length < 65536:
        head = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + length.to_bytes(8, "big")
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((head[0], head[1] | 0x80)) + head[2:] + mask + masked


async def scripted(
    chunks: list[bytes],
    body: Callable[[str], Awaitable[None]],
    *,
    with_response: bool = False,
    wire: bytearray | None = None,
    hang_up: bool = False,
) -> list[Frame]:
    """Run ``body(url)`` against a server that answers the handshake, then writes
    ``chunks`` one read at a time (``with_response``: the first goes out with the
    101); returns the frames the client sent (their bytes go to ``wire``).
    ``hang_up``: close the TCP connection right after the last chunk."""
    received: list[Frame] = []
    done = asyncio.Event()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await talk(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()
            done.set()

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = ServerProtocol()
        events: list[object] = []
        while not events:
            ws.receive_data(await reader.read(4096))
            events = ws.events_received()
        assert isinstance(events[0], Request)
        ws.send_response(ws.accept(events[0]))
        response = b"".join(ws.data_to_send())
        writer.write(response + chunks[0] if with_response else response)
        for chunk in chunks[1:] if with_response else chunks:
            await writer.drain()
            await asyncio.sleep(0.005)  # its own read on the client's side
            writer.write(chunk)
        await writer.drain()
        while not hang_up and (data := await reader.read(4096)):
            if wire is not None:
                wire.extend(data)
            ws.receive_data(data)
            received.extend(e for e in ws.events_received() if isinstance(e, Frame))
            if ws.close_rcvd is not None:
                break

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        await body(f"ws://127.0.0.1:{port}/ws")
        await asyncio.wait_for(done.wait(), seconds(2))
    return received


def test_frames_split_at_every_byte_are_reassembled() -> None:
    texts = ["a", "é" * 100, "b" * 70000, '{"type":"pong"}']
    stream = b"".join(frame(0x81, text.encode()) for text in texts)
    short = frame(0x81, b"x" * 300)
    chunks = [bytes([byte]) for byte in short] + [stream[:3], stream[3:140], stream[140:]]

    async def body(url: str) -> None:
        channel = await open_channel(url)
        got: list[tuple[str, bool]] = []
        while len(got) < 5:
            got += await channel.recv_batch()
        assert got == [("x" * 300, False)] + [(text, False) for text in texts]
        await channel.close()

    run(lambda: scripted(chunks, body))


def test_frames_that_come_with_the_handshake_response_are_read() -> None:
    # The 101 and a frame and a half in one write, the rest in the next.
    stream = frame(0x81, b"first") + frame(0x82, b"\xffsecond") + frame(0x81, b"third")

    async def body(url: str) -> None:
        channel = await open_channel(url)
        got: list[tuple[str, bool]] = []
        while len(got) < 3:
            got += await channel.recv_batch()
        assert got == [("first", False), ("\ufffdsecond", True), ("third", False)]
        await channel.close()

    run(lambda: scripted([stream[:12], stream[12:]], body, with_response=True))


def test_a_fragmented_message_with_a_ping_inside_is_one_message_and_its_ping_answered() -> None:
    chunks = [
        frame(0x81, b"before") + frame(0x01, b"frag") + frame(0x89, b"are you there?"),
        frame(0x00, b"men") + frame(0x80, "ted ✓".encode()) + frame(0x81, b"after"),
    ]
    sent: list[Frame] = []

    async def body(url: str) -> None:
        channel = await open_channel(url)
        got: list[tuple[str, bool]] = []
        while len(got) < 3:
            got += await channel.recv_batch()
        assert got == [("before", False), ("fragmented ✓", False), ("after", False)]
        await channel.close()

    async def go() -> None:
        sent.extend(await scripted(chunks, body))

    run(go)
    assert [(f.opcode, f.data) for f in sent][:1] == [(Opcode.PONG, b"are you there?")]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0x81, b"masked", mask=b"\x01\x02\x03\x04"), 1002),  # §5.1: a server never masks
        (frame(0xC1, b"rsv1"), 1002),  # RSV1 without an extension that defines it
        (frame(0x83, b"opcode 3"), 1002),  # a reserved opcode
        (frame(0x01, b"start") + frame(0x81, b"no continuation"), 1002),
        (frame(0x80, b"continuation of nothing"), 1002),
        (bytes((0x81, 127)) + (1 << 40).to_bytes(8, "big"), 1009),  # no payload needed
        (frame(0x81, b"bad \xff"), 1007),
    ],
    ids=["masked", "rsv1", "opcode", "interrupted-fragments", "lone-continuation", "huge", "utf8"],
)
def test_an_invalid_frame_fails_the_connection_after_the_frames_before_it(
    bad: bytes, code: int
) -> None:
    sent: list[Frame] = []

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("good", False)]
        assert (end.code, end.initiator) == (code, "error")
        await channel.close()

    async def go() -> None:
        # The bad frame and what follows it in the same read: nothing after it counts.
        sent.extend(await scripted([frame(0x81, b"good") + bad + frame(0x81, b"later")], body))

    run(go)
    assert [(f.opcode, Close.parse(f.data).code) for f in sent] == [(Opcode.CLOSE, code)]


def test_frames_after_a_close_frame_are_discarded() -> None:
    close = frame(0x88, Close(4000, "bye").serialize())
    chunks = [frame(0x81, b"one") + close + frame(0x81, b"ghost"), frame(0x81, b"ghost 2")]

    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("one", False)]
        assert (end.code, end.reason, end.initiator) == (4000, "bye", "server")
        await channel.close()

    run(lambda: scripted(chunks, body))


def test_a_connection_lost_inside_a_frame_is_an_error() -> None:
    async def body(url: str) -> None:
        channel = await open_channel(url)
        frames, end = await read_all(channel)
        assert frames == [("whole", False)]
        assert (end.code, end.initiator) == (None, "error")
        await channel.close()

    cut = frame(0x81, b"whole") + frame(0x81, b"cut short")[:6]
    run(lambda: scripted([cut], body, hang_up=True))


def test_every_frame_the_client_sends_is_masked_with_a_fresh_key() -> None:
    wire = bytearray()
    texts = ["x", "y" * 200, "z" * 70000]

    async def body(url: str) -> None:
        channel = await open_channel(url)
        for text in texts:
            await channel.send(text)
        await channel.close()

    async def go() -> None:
        # The server side parses with mask=True: an unmasked frame would fail it.
        sent = await scripted([], body, wire=wire)
        assert [f.data.decode() for f in sent if f.opcode is Opcode.TEXT] == texts

    run(go)
    keys, at = [], 0
    while at < len(wire):
        assert wire[at + 1] & 0x80  # the MASK bit
        length, at = wire[at + 1] & 0x7F, at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length, at = int.from_bytes(wire[at : at + size], "big"), at + size
        keys.append(bytes(wire[at : at + 4]))
        at += 4 + length
    assert len(keys) == 4  # three messages and the close
    assert len(set(keys)) == 4
