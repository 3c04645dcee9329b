"""Open WebSocket connections: the per-connection writer, the registry, the lifecycle.

Each connection has one writer task draining a bounded queue, so frames of
one run leave in the order they were queued, and a slow client never stalls a
run or the other connections (AEP/1 §3). A client that lets more than
``QUEUE_LIMIT`` frames pile up is closed with 1013 (try again later).

When a connection closes, nothing of it is kept: it leaves the registry and
the session table, its writer stops, and the gauge goes down (AEP/1 §4).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, web

from harness.reference.auth import Identity
from harness.reference.metrics import Metrics

log = logging.getLogger(__name__)

QUEUE_LIMIT = 4096

WebSocket = web.WebSocketResponse[Any]


class Connection:
    """One open ``/ws`` connection of one user; its identity is fixed for its life."""

    def __init__(
        self, conn_id: int, user: Identity, ws: WebSocket, on_event_sent: Callable[[], None]
    ) -> None:
        self.id = conn_id
        self.user = user
        self.ws = ws
        #: The runs this connection started (they outlive it, AEP/1 §3).
        self.runs: set[asyncio.Task[None]] = set()
        self._on_event_sent = on_event_sent
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue(QUEUE_LIMIT)
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[Any] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._pump(), name=f"ws-writer-{self.id}")

    def stop(self) -> None:
        """Stop the writer; frames still queued are dropped (the peer is gone)."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def send(self, frame: str, *, event: bool = False) -> None:
        """Queue one text frame; ``event`` marks a lifecycle event (counted when written)."""
        if self._writer is None:
            return
        try:
            self._queue.put_nowait((frame, event))
        except asyncio.QueueFull:
            log.warning("connection %d of %s is not reading; closing it", self.id, self.user)
            self.stop()
            self._closer = asyncio.create_task(
                self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"slow consumer")
            )

    async def _pump(self) -> None:
        # Runs for the connection's life; stop() cancels it.
        while True:
            frame, event = await self._queue.get()
            try:
                await self.ws.send_str(frame)
            except ConnectionError:
                return  # the peer went away; the handler's close path cleans up
            if event:
                self._on_event_sent()


class ConnectionRegistry:
    """Who is connected: the open connections of each user.

    Fan-out looks up a user's connections at the moment each event is sent
    (AEP/1 §3), so the answer must always be exactly that user's open
    connections.
    """

    def __init__(self) -> None:
        self._routes: dict[Hashable, set[Connection]] = {}
        self._open: dict[int, Connection] = {}
        self._ids = itertools.count(1)

    def _route(self, user: Identity) -> Hashable:
        return user

    def allocate(self) -> int:
        """A fresh connection id."""
        return next(self._ids)

    def add(self, conn: Connection) -> None:
        """Register an open connection."""
        self._open[conn.id] = conn
        self._routes.setdefault(self._route(conn.user), set()).add(conn)

    def remove(self, conn: Connection) -> None:
        """Unregister a connection; a no-op when it is not registered."""
        self._open.pop(conn.id, None)
        route = self._route(conn.user)
        conns = self._routes.get(route)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._routes[route]

    def connections_of(self, user: Identity) -> Sequence[Connection]:
        """The connections an event of ``user``'s run goes to now."""
        return tuple(self._routes.get(self._route(user), ()))

    def all(self) -> list[Connection]:
        """Every open connection (for shutdown)."""
        return list(self._open.values())


@dataclass(frozen=True, slots=True)
class Session:
    """What the service remembers about an open session."""

    conn_id: int
    user: Identity
    opened_at: float


class SessionTable:
    """Open sessions by connection id (for logs and shutdown accounting)."""

    def __init__(self) -> None:
        self._sessions: dict[Hashable, Session] = {}

    def remember(self, conn: Connection) -> None:
        """Record a newly accepted session."""
        self._sessions[conn.id] = Session(conn.id, conn.user, time.monotonic())

    def forget(self, conn: Connection) -> None:
        """Drop a closed session."""
        self._sessions.pop(conn.id, None)

    def __len__(self) -> int:
        return len(self._sessions)


class Lifecycle:
    """Opens and closes connections: registry, session table, writer and gauges."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        sessions: SessionTable,
        metrics: Metrics,
        *,
        on_open: Sequence[Callable[[Connection], None]] = (),
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._metrics = metrics
        self._on_open = tuple(on_open)

    def open(self, user: Identity, ws: WebSocket) -> Connection:
        """Admit an accepted WebSocket as a connection of ``user``."""
        conn = Connection(self._registry.allocate(), user, ws, self._metrics.events_sent.inc)
        self._registry.add(conn)
        self._sessions.remember(conn)
        self._metrics.connections_active.inc()
        self._metrics.sessions.inc()
        for hook in self._on_open:
            hook(conn)
        conn.start()
        return conn

    def close(self, conn: Connection) -> None:
        """Release a closed connection; its runs go on (AEP/1 §3)."""
        self._registry.remove(conn)
        self._sessions.forget(conn)
        conn.stop()
        self._metrics.connections_active.dec()

    async def aclose(self) -> None:
        """Finish background work (none here)."""
