"""A fault-injecting TCP proxy on loopback, for isolation tests under network faults.

The harness connects to the proxy instead of the target; HTTP and WebSocket
traffic both pass through it byte for byte. Faults are set per direction and
may change while connections are live::

    async with FaultProxy("127.0.0.1", 8080, seed=7) as proxy:
        proxy.set_faults(downstream=Faults(delay_s=0.05, jitter_s=0.02))
        url = proxy.url("ws")           # point the users here
        ...
        await proxy.reset_all()         # a reconnect storm: every client sees a reset

Directions: ``upstream`` is client → target, ``downstream`` is target → client.

Guarantees:

* Bytes are never reordered, duplicated or altered; a fault only delays,
  holds back or cuts the stream.
* Memory is bounded: each direction holds at most :data:`QUEUE_CHUNKS`
  chunks of :data:`CHUNK_SIZE` bytes (besides asyncio's own bounded stream
  and transport buffers), then stops reading, so TCP backpressure reaches
  the sender.
* Randomness (jitter, stalls) comes from :class:`random.Random` seeded from
  ``seed``, the connection's ordinal and the direction, so a connection's draws
  do not depend on how other connections interleave. (Chunk boundaries still
  depend on the kernel, so a stall may hit a different byte offset.)
* The proxy listens on loopback only. It runs in the event loop, no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import math
import random
import socket
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from harness.errors import HarnessError, UsageError

__all__ = ["CHUNK_SIZE", "QUEUE_CHUNKS", "Direction", "FaultProxy", "Faults", "ProxyStats"]

Direction = Literal["upstream", "downstream"]

#: Largest read from one socket, in bytes.
CHUNK_SIZE = 64 * 1024
#: Chunks one direction may hold between reading and forwarding.
QUEUE_CHUNKS = 16
#: A bandwidth-limited write is cut into pieces of this many seconds' worth of bytes.
_PACING_S = 0.02
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Faults:
    """The faults applied to one direction of every connection.

    Attributes:
        delay_s: latency added to every chunk; throughput is not reduced by it
            (chunks are pipelined, each delivered ``delay_s`` after it arrived).
        jitter_s: extra latency drawn uniformly from ``[0, jitter_s]`` per chunk;
            never reorders bytes (a chunk is not delivered before its predecessor).
        drop_rate: probability that a chunk is black-holed. TCP cannot lose a
            chunk and carry on, so a drop *stalls* the direction: that chunk and
            all after it are held, silently, until the next :meth:`FaultProxy.set_faults`
            call, when the chunk is judged again under the new faults.
        bandwidth_bytes_per_s: throughput cap in bytes (not bits) per second;
            ``None`` for no cap.
        reset_after_bytes: once this many bytes have crossed the connection in
            this direction, forward no more and reset both sides (RST). Counts
            from the start of the connection, so lowering it live below what has
            already crossed resets the connection on its next chunk.

    Raises:
        UsageError: a value out of range.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    drop_rate: float = 0.0
    bandwidth_bytes_per_s: int | None = None
    reset_after_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay_s", "jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(
                    f"Faults {name}={value!r} is invalid; use a finite number of seconds >= 0"
                )
        if not 0 <= self.drop_rate <= 1:
            raise UsageError(
                f"Faults drop_rate={self.drop_rate!r} is invalid; use a probability in [0, 1]"
            )
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s < 1:
            raise UsageError(
                f"Faults bandwidth_bytes_per_s={self.bandwidth_bytes_per_s!r} is invalid; "
                "use bytes per second >= 1, or None for no limit"
            )
        if self.reset_after_bytes is not None and self.reset_after_bytes < 0:
            raise UsageError(
                f"Faults reset_after_bytes={self.reset_after_bytes!r} is invalid; "
                "use a byte count >= 0, or None for no reset"
            )


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters.

    Attributes:
        accepted: connections accepted, including refused ones.
        active: connections open now (including those held by a blackhole).
        refused: connections closed at once because of :meth:`FaultProxy.refuse_new`.
        reset: connections the proxy reset as a fault (``reset_all``, ``reset_after_bytes``).
        upstream_failures: connections closed because the target could not be reached.
        bytes_upstream: bytes forwarded client → target.
        bytes_downstream: bytes forwarded target → client.
    """

    accepted: int = 0
    active: int = 0
    refused: int = 0
    reset: int = 0
    upstream_failures: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0


def _abort(transport: asyncio.WriteTransport | None, *, rst: bool) -> None:
    """Close ``transport`` now, discarding buffered data; with ``rst``, send a RST."""
    if transport is None:
        return
    if rst and not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Link:
    """One proxied connection: the client side, the upstream side, and the task serving them."""

    def __init__(self, proxy: FaultProxy, ordinal: int, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.ordinal = ordinal
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        # Known from connection_made on, so a cancelled connect cannot leak it.
        self.upstream_transport: asyncio.WriteTransport | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def rng(self, direction: Direction, purpose: str) -> random.Random:
        # A str seed is hashed with SHA-512: stable across runs and PYTHONHASHSEED.
        return random.Random(f"{self.proxy.seed}/{self.ordinal}/{direction}/{purpose}")

    def abort(self, *, rst: bool) -> bool:
        """Drop both sides and stop serving; False if already closed."""
        if self.closed:
            return False
        self.closed = True
        _abort(self.client.transport, rst=rst)
        _abort(self.upstream_transport, rst=rst)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        return True


class _UpstreamProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, link: _Link, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.WriteTransport)
        self._link.upstream_transport = transport
        if self._link.closed:
            transport.abort()


class FaultProxy:
    """A TCP proxy from a loopback port to ``upstream_host:upstream_port`` that injects faults.

    Use it as an async context manager (``start`` on entry, ``aclose`` on exit),
    or call :meth:`start` and :meth:`aclose` yourself. All methods must be
    called from the event loop that started it.

    Args:
        upstream_host: the target's host.
        upstream_port: the target's port.
        listen_host: a loopback address to listen on.
        listen_port: the port to listen on; 0 picks a free one.
        seed: seeds every random draw (see the module docstring).
        connect_timeout_s: how long to wait for the target before giving up
            on a connection (the client's connection is then reset).

    Raises:
        UsageError: ``listen_host`` is not a loopback address.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not _is_loopback(listen_host):
            raise UsageError(
                f"listen_host {listen_host!r} is not a loopback address; the fault proxy "
                "listens on loopback only: use '127.0.0.1' or '::1'"
            )
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.seed = seed
        self._listen_port = listen_port
        self._connect_timeout_s = connect_timeout_s
        self._faults: dict[Direction, Faults] = {"upstream": Faults(), "downstream": Faults()}
        # Set and replaced on every set_faults(), waking stalled directions.
        self._faults_changed = asyncio.Event()
        self._flowing = asyncio.Event()  # cleared while the blackhole is on
        self._flowing.set()
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._closing = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordinals = itertools.count()
        self._failures: list[BaseException] = []
        self._accepted = 0
        self._refused = 0
        self._reset = 0
        self._upstream_failures = 0
        self._bytes: dict[Direction, int] = {"upstream": 0, "downstream": 0}

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> str:
        """Start listening; return ``"HOST:PORT"`` (IPv6 hosts in brackets).

        Raises:
            UsageError: already started, or closed.
            OSError: the listening socket could not be bound.
        """
        if self._server is not None or self._closing:
            raise UsageError("FaultProxy.start() was called twice; create a new FaultProxy")
        self._server = await asyncio.start_server(
            self._on_accept, self.listen_host, self._listen_port, limit=CHUNK_SIZE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self.address

    async def aclose(self) -> None:
        """Stop listening, drop every connection and wait until all of the proxy's tasks are done.

        Connections are closed at once (buffered data is discarded). Idempotent.

        Raises:
            HarnessError: a connection's task failed with an unexpected exception
                (a bug in the proxy); the exception is chained.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort(rst=False)
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._failures:
            failure, self._failures = self._failures[0], []
            raise HarnessError(f"a fault proxy connection failed: {failure!r}") from failure

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- where it listens --------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port.

        Raises:
            UsageError: not started.
        """
        if self._port is None:
            raise UsageError("FaultProxy has no port before start(); await proxy.start() first")
        return self._port

    @property
    def address(self) -> str:
        """``"HOST:PORT"`` to connect to (IPv6 hosts in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.port}"

    def url(self, scheme: str = "http", path: str = "") -> str:
        """``scheme://HOST:PORT`` + ``path``, e.g. ``proxy.url("ws", "/v1/events")``."""
        return f"{scheme}://{self.address}{path}"

    # -- faults --------------------------------------------------------------------

    def faults(self, direction: Direction) -> Faults:
        """The faults now applied to ``direction``."""
        return self._faults[direction]

    def set_faults(
        self, *, upstream: Faults | None = None, downstream: Faults | None = None
    ) -> None:
        """Replace the faults of one or both directions; ``None`` leaves a direction as it is.

        Applies at once to live connections (to chunks not yet forwarded), and
        releases stalled directions so their held chunk is judged again.
        """
        if upstream is not None:
            self._faults["upstream"] = upstream
        if downstream is not None:
            self._faults["downstream"] = downstream
        self._faults_changed.set()
        self._faults_changed = asyncio.Event()

    def refuse_new(self, refuse: bool) -> None:
        """While on, reset every new connection as soon as it is accepted.

        The target is never contacted; the client sees its connection reset
        before any byte arrives. Live connections are not affected.
        """
        self._refusing = refuse

    def blackhole(self, on: bool) -> None:
        """While on, forward nothing: a server that accepts and then says nothing.

        New connections are accepted but not connected to the target; live ones
        stop forwarding in both directions (their bytes are held, bounded, with
        backpressure). Turning it off lets everything held through, in order.
        """
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def reset_all(self) -> int:
        """Reset (RST) both sides of every live connection; return how many were reset."""
        count = sum(self._inject_reset(link) for link in list(self._links))
        await asyncio.sleep(0)  # let the cancelled tasks start unwinding
        return count

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            accepted=self._accepted,
            active=len(self._links),
            refused=self._refused,
            reset=self._reset,
            upstream_failures=self._upstream_failures,
            bytes_upstream=self._bytes["upstream"],
            bytes_downstream=self._bytes["downstream"],
        )

    # -- serving -------------------------------------------------------------------

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Synchronous on purpose: the task is tracked from the moment it exists,
        # so aclose() can never miss one.
        self._accepted += 1
        if self._refusing or self._closing:  # closing: accepted just before the listener shut
            if self._refusing:
                self._refused += 1
            _abort(writer.transport, rst=True)
            return
        link = _Link(self, next(self._ordinals), writer)
        link.task = self._spawn(self._serve(link, reader), f"conn-{link.ordinal}")
        self._links.add(link)

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"faultproxy:{self.port}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failures.append(exc)

    async def _serve(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            await self._flowing.wait()  # blackhole: hold the new connection silent
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    up_reader, link.upstream = await self._connect(link)
            except (OSError, TimeoutError):
                self._upstream_failures += 1
                link.abort(rst=True)
                return
            pipes: tuple[tuple[Direction, asyncio.StreamReader, asyncio.StreamWriter], ...] = (
                ("upstream", client_reader, link.upstream),
                ("downstream", up_reader, link.client),
            )
            async with asyncio.TaskGroup() as group:
                for direction, src, dst in pipes:
                    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
                    name = f"faultproxy:{self.port}:conn-{link.ordinal}:{direction}"
                    group.create_task(self._read(link, direction, src, queue), name=name + ":read")
                    group.create_task(
                        self._write(link, direction, dst, queue), name=name + ":write"
                    )
            await self._close_gracefully(link)
        finally:
            link.abort(rst=False)
            self._links.discard(link)

    async def _connect(self, link: _Link) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``asyncio.open_connection``, but putting the transport on ``link`` at once."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK_SIZE, loop=loop)
        protocol = _UpstreamProtocol(link, reader)
        transport, _ = await loop.create_connection(
            lambda: protocol, self.upstream_host, self.upstream_port
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _read(
        self,
        link: _Link,
        direction: Direction,
        src: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        """Read chunks and stamp each with the time it is due; ``b""`` marks EOF."""
        loop = asyncio.get_running_loop()
        rng = link.rng(direction, "jitter")
        last_due = 0.0
        while True:
            try:
                data = await src.read(CHUNK_SIZE)
            except OSError:
                link.abort(rst=True)  # a reset on one side is passed on to the other
                return
            faults = self._faults[direction]
            due = loop.time() + faults.delay_s
            if faults.jitter_s:
                due += rng.uniform(0, faults.jitter_s)
            last_due = due = max(due, last_due)  # jitter never reorders
            await queue.put((due, data))  # blocks when full: backpressure
            if not data:
                return

    async def _write(
        self,
        link: _Link,
        direction: Direction,
        dst: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        """Forward chunks when due, through the blackhole, stall, bandwidth and reset faults."""
        loop = asyncio.get_running_loop()
        rng = link.rng(direction, "drop")
        sent = 0
        next_slot = 0.0  # bandwidth pacing: when the next piece may go
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            while True:
                await self._flowing.wait()  # blackhole
                drop_rate = self._faults[direction].drop_rate
                if not (data and drop_rate and rng.random() < drop_rate):
                    break
                await self._faults_changed.wait()  # stalled until the faults change
            try:
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                view = memoryview(data)
                while view:
                    faults = self._faults[direction]
                    limit = faults.reset_after_bytes
                    if limit is not None and sent >= limit:
                        self._inject_reset(link)
                        return
                    size = len(view) if limit is None else min(len(view), limit - sent)
                    rate = faults.bandwidth_bytes_per_s
                    if rate is not None:
                        size = min(size, max(1, int(rate * _PACING_S)))
                        await asyncio.sleep(max(0.0, next_slot - loop.time()))
                        next_slot = max(next_slot, loop.time()) + size / rate
                    dst.write(view[:size])
                    await dst.drain()
                    view = view[size:]
                    sent += size
                    self._bytes[direction] += size
                limit = self._faults[direction].reset_after_bytes
                if limit is not None and sent >= limit:
                    self._inject_reset(link)
                    return
            except OSError:
                link.abort(rst=True)
                return

    def _inject_reset(self, link: _Link) -> bool:
        """Reset ``link`` as a fault, counting it; False if it was already closed."""
        if not link.abort(rst=True):
            return False
        self._reset += 1
        return True

    async def _close_gracefully(self, link: _Link) -> None:
        """Both directions reached EOF: close both sides with FIN, or abort if that stalls."""
        assert link.upstream is not None
        writers = (link.client, link.upstream)
        for writer in writers:
            writer.close()
        try:
            async with asyncio.timeout(1.0):
                for writer in writers:
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            pass
