"""Fault modes: deliberately broken stand-ins for parts of the service.

``--fault NAME`` swaps one part of the service for the implementation below.
Each is written the way such bugs ship (a shared object, a key missing the
user, a registry not cleaned up), and reads like production code; the bug is
named in :data:`FAULTS`. ``noisy`` is not a bug: a correct service with
jittery timing and a bounded cache, which a harness must not flag.

Two faults that replace the same part cannot be combined (see
:data:`EXCLUSIVE`); the others compose.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from harness.reference.auth import Identity
from harness.reference.connections import (
    Connection,
    ConnectionRegistry,
    Lifecycle,
    SessionTable,
)
from harness.reference.metrics import Metrics
from harness.reference.protocol import ErrorReporter, encode
from harness.reference.runs import Event, Publisher, Runner, RunSpec, ThinkTime, lifecycle_events
from harness.reference.store import (
    LocalStateBackend,
    StateBackend,
    StateStore,
    ThreadStore,
)

log = logging.getLogger(__name__)

#: Every fault mode, with its bug in one line.
FAULTS: dict[str, str] = {
    "singleton_emitter": "one process-wide emitter remembers the run it serves; a concurrent "
    "user's run overwrites it across an await, so events go to the other user",
    "state_key_missing_user": "the state store is keyed by key alone: users sharing a key "
    "read and overwrite each other's values",
    "thread_key_missing_user": "threads are keyed by thread id alone: history and "
    "/api/threads/{id} show other users' messages",
    "path_cache": "a 0.5 s GET micro-cache keyed by request path serves one user's response "
    "to another who reads the same path",
    "reconnect_registry": "connection slots are reused without removing the old owner's "
    "subscription, so the next connection in the slot gets that owner's events",
    "dirty_pipe": "a shared state-backend pipe is left holding an unread response when a "
    "request is cancelled mid-flight; the next request reads it (redis-py 2023)",
    "tenant_broadcast": "connections are routed by tenant, so events reach every connection "
    "of the owner's tenant",
    "lost_event": "a batching outbox keyed by seq lets overlapping runs of a user overwrite "
    "each other's pending events",
    "duplicate_event": "a step retried after its model call overruns re-emits the event "
    "it had already sent",
    "out_of_order": "each event is sent by its own fire-and-forget task after a jittery "
    "audit write, so a run's events can overtake each other",
    "session_leak": "each session's replay buffer (--leak-kb) is never freed: it is "
    "dropped by user but stored by connection id",
    "gauge_stuck": "a connection closed with runs in flight is released by a path that "
    "forgets to decrement aep_connections_active",
    "error_echo": "error frames carry the request being served, kept process-wide: a bad "
    "frame's error quotes the last message any user sent",
    "message_id_cache": "an idempotency cache keyed by message id alone replays the stored "
    "run of a message id already seen, whoever sent it",
    "undo_buffer": "deleted values are kept for undo keyed by state key alone, and a read of "
    "a key that is not set falls back to them: after a delete, a user reads the value of "
    "whoever deleted that key last",
    "preview_leak": "the thinking step shows a 'recent activity' ticker: the first 40 "
    "characters of the latest message anyone sent, upper-cased",
    "noisy": "not a bug: heavy-tailed think time (runs finish out of order) and a bounded "
    "per-session cache (memory rises about 12 MiB over ~200 sessions, then plateaus)",
}

#: Groups of faults that replace the same part of the service.
EXCLUSIVE: tuple[frozenset[str], ...] = (
    frozenset({"tenant_broadcast", "reconnect_registry"}),
    frozenset({"singleton_emitter", "duplicate_event", "message_id_cache", "preview_leak"}),
    frozenset({"lost_event", "out_of_order"}),
)


def conflict(faults: Collection[str]) -> str | None:
    """Describe why ``faults`` cannot be combined, or None when they can."""
    for group in EXCLUSIVE:
        chosen = sorted(group & set(faults))
        if len(chosen) > 1:
            return f"faults {' and '.join(chosen)} replace the same part; choose one"
    return None


# -- singleton_emitter ------------------------------------------------------------------------


class SharedEmitterRunner(Runner):
    """Streams every run through one long-lived emitter that tracks the run it is serving."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current: RunSpec | None = None

    async def _run(self, spec: RunSpec) -> None:
        self._current = spec
        for event in self._events(spec):
            await asyncio.sleep(self._think.delay())
            self._emit(event)

    def _emit(self, event: Event) -> None:
        assert self._current is not None
        self._publisher.publish(self._current.owner, event)


# -- state_key_missing_user / thread_key_missing_user -----------------------------------------


class FlatStateStore(StateStore):
    """State in one flat keyspace, like the cache cluster it fronts."""

    def _slot(self, user: Identity, key: str) -> Hashable:
        return key


class FlatThreadStore(ThreadStore):
    """Threads addressed by their id, which clients generate."""

    def _slot(self, user: Identity, thread_id: str) -> Hashable:
        return thread_id


# -- path_cache -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cached:
    status: int
    body: bytes
    content_type: str
    expires: float


class MicroCache:
    """Serves repeated API GETs of the same path from memory for half a second."""

    def __init__(self, ttl_s: float = 0.5, max_entries: int = 1024) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Cached] = OrderedDict()

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """aiohttp middleware: answer from the cache, or fill it."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        if request.method != "GET":
            self._entries.pop(request.path, None)
            return await handler(request)
        now = time.monotonic()
        hit = self._entries.get(request.path)
        if hit is not None and hit.expires > now:
            return web.Response(status=hit.status, body=hit.body, content_type=hit.content_type)
        response = await handler(request)
        if isinstance(response, web.Response) and response.status == 200:
            body = response.body
            if isinstance(body, bytes):
                self._entries[request.path] = _Cached(
                    200, body, response.content_type, now + self._ttl_s
                )
                self._entries.move_to_end(request.path)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return response


# -- reconnect_registry -----------------------------------------------------------------------


class SlotRegistry(ConnectionRegistry):
    """Connections in a reusable slot table; a user's subscription is the set of its slots."""

    def __init__(self) -> None:
        super().__init__()
        self._slots: dict[int, Connection] = {}
        self._free: list[int] = []
        self._subscriptions: dict[Identity, set[int]] = {}

    def allocate(self) -> int:
        """The most recently freed slot (warm in cache), or a new one."""
        return self._free.pop() if self._free else len(self._slots) + len(self._free)

    def add(self, conn: Connection) -> None:
        """Put the connection in its slot and subscribe the slot to its user's events."""
        self._slots[conn.id] = conn
        self._subscriptions.setdefault(conn.user, set()).add(conn.id)

    def remove(self, conn: Connection) -> None:
        """Free the connection's slot."""
        if self._slots.get(conn.id) is conn:
            del self._slots[conn.id]
            self._free.append(conn.id)

    def connections_of(self, user: Identity) -> Sequence[Connection]:
        """The connections in the user's subscribed slots."""
        slots = self._subscriptions.get(user, ())
        return tuple(self._slots[slot] for slot in slots if slot in self._slots)

    def all(self) -> list[Connection]:
        """Every occupied slot."""
        return list(self._slots.values())


# -- tenant_broadcast -------------------------------------------------------------------------


class TenantRoutedRegistry(ConnectionRegistry):
    """Routes events by tenant, the unit the gateway shards on."""

    def _route(self, user: Identity) -> Hashable:
        return user.tenant


# -- dirty_pipe -------------------------------------------------------------------------------

PIPE_RTT_S = 0.025


class StateServer:
    """The state server at the far end of the pipe (in-process, with a network round trip)."""

    def __init__(self, store: StateStore, rtt_s: float = PIPE_RTT_S) -> None:
        self.requests: asyncio.Queue[tuple[str, Identity, str, bytes]] = asyncio.Queue()
        self.responses: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._store = store
        self._rtt_s = rtt_s

    async def serve(self) -> None:
        """Answer requests in order, forever (cancelled at shutdown)."""
        while True:
            op, user, key, value = await self.requests.get()
            await asyncio.sleep(self._rtt_s)
            reply: bytes | None = None
            if op == "SET":
                self._store.put(user, key, value)
            elif op == "GET":
                reply = self._store.get(user, key)
            else:
                self._store.delete(user, key)
            self.responses.put_nowait(reply)


class PipelinedStateBackend:
    """State on a backend server over one long-lived connection, one request at a time."""

    def __init__(self, server: StateServer) -> None:
        self._server = server
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def _call(self, op: str, user: Identity, key: str, value: bytes = b"") -> bytes | None:
        if self._task is None:
            self._task = asyncio.create_task(self._server.serve(), name="state-server")
        async with self._lock:
            self._server.requests.put_nowait((op, user, key, value))
            return await self._server.responses.get()

    async def put(self, user: Identity, key: str, value: bytes) -> None:
        """SET the user's key."""
        await self._call("SET", user, key, value)

    async def get(self, user: Identity, key: str) -> bytes | None:
        """GET the user's key."""
        return await self._call("GET", user, key)

    async def delete(self, user: Identity, key: str) -> None:
        """DEL the user's key."""
        await self._call("DEL", user, key)

    async def aclose(self) -> None:
        """Stop the server task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- lost_event -------------------------------------------------------------------------------

FLUSH_INTERVAL_S = 0.010


class BatchingPublisher(Publisher):
    """Batches each user's events and flushes them every 10 ms; a re-publish replaces its copy."""

    def __init__(
        self, registry: ConnectionRegistry, *, encode_event: Callable[[Event], str] = encode
    ) -> None:
        super().__init__(registry, encode_event=encode_event)
        self._pending: dict[Identity, dict[int, Event]] = {}
        self._flushes: dict[Identity, asyncio.TimerHandle] = {}

    def publish(self, owner: Identity, event: Event) -> None:
        """Queue ``event`` for the owner's next flush."""
        self._pending.setdefault(owner, {})[event["seq"]] = event
        if owner not in self._flushes:
            loop = asyncio.get_running_loop()
            self._flushes[owner] = loop.call_later(FLUSH_INTERVAL_S, self._flush, owner)

    def _flush(self, owner: Identity) -> None:
        del self._flushes[owner]
        for event in self._pending.pop(owner, {}).values():
            super().publish(owner, event)

    async def aclose(self) -> None:
        """Drop pending flushes."""
        for handle in self._flushes.values():
            handle.cancel()
        self._flushes.clear()
        self._pending.clear()


# -- duplicate_event --------------------------------------------------------------------------

HEDGE_ATTEMPTS = 2


class HedgedRunner(Runner):
    """Retries a step whose model call overruns the median latency (request hedging)."""

    async def _run(self, spec: RunSpec) -> None:
        for event in self._events(spec):
            await self._step(spec.owner, event)

    async def _step(self, owner: Identity, event: Event) -> None:
        budget = self._think.median_s
        for _ in range(HEDGE_ATTEMPTS):
            try:
                async with asyncio.timeout(budget):
                    await self._call_model(owner, event)
                return
            except TimeoutError:
                log.debug("model call over %.3f s; hedging", budget)
                budget *= 2
        await self._call_model(owner, event)

    async def _call_model(self, owner: Identity, event: Event) -> None:
        self._publisher.publish(owner, event)  # progress first, so the user sees the step start
        await asyncio.sleep(self._think.delay())


# -- out_of_order -----------------------------------------------------------------------------


class AuditedPublisher(Publisher):
    """Writes each event to the audit log, then publishes it, off the agent's critical path."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        think: ThinkTime,
        rng: random.Random,
        *,
        encode_event: Callable[[Event], str] = encode,
    ) -> None:
        super().__init__(registry, encode_event=encode_event)
        self._audit_latency_s = 3 * think.max_s + 0.005
        self._rng = rng
        self._tasks: set[asyncio.Task[None]] = set()

    def publish(self, owner: Identity, event: Event) -> None:
        """Audit and publish ``event`` on a background task."""
        task = asyncio.create_task(self._audit_then_publish(owner, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit_then_publish(self, owner: Identity, event: Event) -> None:
        await asyncio.sleep(self._rng.uniform(0, self._audit_latency_s))  # the audit write
        super().publish(owner, event)

    async def aclose(self) -> None:
        """Cancel audit writes in flight."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- session_leak -----------------------------------------------------------------------------


class ReplaySessionTable(SessionTable):
    """Keeps a replay buffer per session so a reconnecting client can resume its stream."""

    def __init__(self, buffer_bytes: int) -> None:
        super().__init__()
        self._buffer_bytes = buffer_bytes
        self._replay: dict[Hashable, bytearray] = {}

    def remember(self, conn: Connection) -> None:
        """Record the session and allocate its replay buffer."""
        super().remember(conn)
        self._replay[conn.id] = bytearray(b"\0") * self._buffer_bytes

    def forget(self, conn: Connection) -> None:
        """Drop the session and its replay buffer."""
        super().forget(conn)
        self._replay.pop(conn.user, None)


# -- gauge_stuck ------------------------------------------------------------------------------


class DeferredReleaseLifecycle(Lifecycle):
    """Keeps a closing connection registered until the runs it started have finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._releases: set[asyncio.Task[None]] = set()

    def close(self, conn: Connection) -> None:
        """Release now, or once the connection's runs are done."""
        if not conn.runs:
            super().close(conn)
            return
        task = asyncio.create_task(self._release_when_idle(conn, tuple(conn.runs)))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_when_idle(
        self, conn: Connection, runs: Sequence[asyncio.Task[None]]
    ) -> None:
        await asyncio.wait(runs)
        self._registry.remove(conn)
        self._sessions.forget(conn)
        conn.stop()

    async def aclose(self) -> None:
        """Cancel pending releases."""
        tasks = list(self._releases)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- error_echo -------------------------------------------------------------------------------

CONTEXT_CHARS = 300


class ContextErrorReporter(ErrorReporter):
    """Error reports carry the request being served, for support tickets."""

    def __init__(self) -> None:
        self._context = ""  # the "current request", process-wide (meant to be a contextvar)

    def accepted(self, text: str) -> None:
        """Remember the frame being served."""
        self._context = text

    def message(self, reason: str) -> str:
        """The reason, with the request being served for context."""
        return f"{reason} (context: {self._context[:CONTEXT_CHARS]})"


# -- preview_leak -----------------------------------------------------------------------------

PREVIEW_CHARS = 40


class TickerRunner(Runner):
    """Thinks aloud with a "recent activity" ticker, as the product's sidebar shows it: the
    beginning of the latest message the service accepted, upper-cased (meant to be the
    user's own latest message, but kept in one process-wide field)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._latest = ""

    def start(self, spec: RunSpec) -> asyncio.Task[None]:
        self._latest = spec.content
        return super().start(spec)

    async def _run(self, spec: RunSpec) -> None:
        for event in self._events(spec):
            await asyncio.sleep(self._think.delay())
            if event["type"] == "agent_thinking":
                ticker = self._latest[:PREVIEW_CHARS].upper()
                thought = f"{event['data']['thought']} (recent: {ticker}…)"
                event = {**event, "data": {"thought": thought}}
            self._publisher.publish(spec.owner, event)


# -- message_id_cache -------------------------------------------------------------------------

IDEMPOTENCY_ENTRIES = 10_000


class IdempotentRunner(Runner):
    """Runs each message id once: a message id already seen is a client's retry, answered
    by replaying the stored run instead of running the agent twice (bounded LRU)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen: OrderedDict[str, RunSpec] = OrderedDict()

    def start(self, spec: RunSpec) -> asyncio.Task[None]:
        """Start the run, or replay the stored one of the same message id."""
        stored = self._seen.get(spec.message_id)
        if stored is None:
            self._seen[spec.message_id] = spec
            while len(self._seen) > IDEMPOTENCY_ENTRIES:
                self._seen.popitem(last=False)
            return super().start(spec)
        task = asyncio.create_task(self._replay(spec.owner, stored), name=f"replay-{spec.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _replay(self, retrier: Identity, stored: RunSpec) -> None:
        for event in lifecycle_events(stored, thoughts=1):
            self._publisher.publish(retrier, event)


# -- undo_buffer ------------------------------------------------------------------------------

UNDO_ENTRIES = 1024


class UndoableState:
    """Keeps each deleted value for undo; a read of a key that is not set looks there too,
    so a client reading right after an undo still sees its value (bounded LRU)."""

    def __init__(self, inner: StateBackend) -> None:
        self._inner = inner
        self._deleted: OrderedDict[str, bytes] = OrderedDict()

    async def put(self, user: Identity, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for ``user``."""
        await self._inner.put(user, key, value)

    async def get(self, user: Identity, key: str) -> bytes | None:
        """The value, else the last deleted value of ``key``, else None."""
        value = await self._inner.get(user, key)
        return value if value is not None else self._deleted.get(key)

    async def delete(self, user: Identity, key: str) -> None:
        """Forget ``key`` for ``user``, keeping its value for undo."""
        value = await self._inner.get(user, key)
        if value is not None:
            self._deleted[key] = value
            self._deleted.move_to_end(key)
            while len(self._deleted) > UNDO_ENTRIES:
                self._deleted.popitem(last=False)
        await self._inner.delete(user, key)

    async def aclose(self) -> None:
        """Close the backend underneath."""
        await self._inner.aclose()


# -- noisy ------------------------------------------------------------------------------------


class LongTailThinkTime(ThinkTime):
    """Model latency with a long tail: one call in eight is three to eight times slower."""

    def delay(self) -> float:
        """One delay, in seconds."""
        base = super().delay()
        return base * self._rng.uniform(3, 8) if self._rng.random() < 0.125 else base


class ProfileCache:
    """The most recent sessions' rendered profiles, LRU-bounded, to speed up reconnects.

    Sized to fill (about 12 MiB) within the first ~200 sessions, so that even a
    one-minute soak sees it warm up and then plateau: a cache still filling at
    the end of a run is, from outside, indistinguishable from a leak.
    """

    def __init__(self, max_entries: int = 200, entry_bytes: int = 64 * 1024) -> None:
        self._entries: OrderedDict[int, bytearray] = OrderedDict()
        self._max_entries = max_entries
        self._entry_bytes = entry_bytes

    def warm(self, conn: Connection) -> None:
        """Render and cache the profile of a new session."""
        self._entries[conn.id] = bytearray(conn.user.sub.encode()[:1] or b"\1") * self._entry_bytes
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# -- assembly ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parts:
    """The service's replaceable parts, correct or faulty."""

    registry: ConnectionRegistry
    lifecycle: Lifecycle
    publisher: Publisher
    runner: Runner
    state: StateBackend
    threads: ThreadStore
    middlewares: tuple[Middleware, ...]
    errors: ErrorReporter


def assemble(
    faults: Collection[str],
    *,
    think_ms: tuple[int, int],
    leak_kb: int,
    metrics: Metrics,
    rng: random.Random,
    encode_event: Callable[[Event], str] = encode,
) -> Parts:
    """Build the parts, choosing the faulty implementation for each fault in ``faults``.

    Raises:
        ValueError: an unknown fault, or two that replace the same part.
    """
    unknown = sorted(set(faults) - FAULTS.keys())
    if unknown:
        raise ValueError(f"unknown fault {unknown[0]!r}; valid faults: {', '.join(FAULTS)}")
    problem = conflict(faults)
    if problem is not None:
        raise ValueError(problem)
    on = set(faults).__contains__

    think_class = LongTailThinkTime if on("noisy") else ThinkTime
    think = think_class(think_ms[0], think_ms[1], rng)

    registry: ConnectionRegistry
    if on("tenant_broadcast"):
        registry = TenantRoutedRegistry()
    elif on("reconnect_registry"):
        registry = SlotRegistry()
    else:
        registry = ConnectionRegistry()

    sessions = ReplaySessionTable(leak_kb * 1024) if on("session_leak") else SessionTable()
    hooks = [ProfileCache().warm] if on("noisy") else []
    lifecycle_class = DeferredReleaseLifecycle if on("gauge_stuck") else Lifecycle
    lifecycle = lifecycle_class(registry, sessions, metrics, on_open=hooks)

    publisher: Publisher
    if on("lost_event"):
        publisher = BatchingPublisher(registry, encode_event=encode_event)
    elif on("out_of_order"):
        publisher = AuditedPublisher(registry, think, rng, encode_event=encode_event)
    else:
        publisher = Publisher(registry, encode_event=encode_event)

    runner_class = Runner
    if on("singleton_emitter"):
        runner_class = SharedEmitterRunner
    elif on("duplicate_event"):
        runner_class = HedgedRunner
    elif on("message_id_cache"):
        runner_class = IdempotentRunner
    elif on("preview_leak"):
        runner_class = TickerRunner
    runner = runner_class(publisher, think, metrics, rng)

    store = FlatStateStore() if on("state_key_missing_user") else StateStore()
    state: StateBackend
    if on("dirty_pipe"):
        state = PipelinedStateBackend(StateServer(store))
    else:
        state = LocalStateBackend(store)
    if on("undo_buffer"):
        state = UndoableState(state)
    threads = FlatThreadStore() if on("thread_key_missing_user") else ThreadStore()
    middlewares = (MicroCache().middleware,) if on("path_cache") else ()
    errors = ContextErrorReporter() if on("error_echo") else ErrorReporter()
    return Parts(registry, lifecycle, publisher, runner, state, threads, middlewares, errors)
