"""HTTP and WebSocket routes of the reference service (AEP/1 §2, §3).

Request handling order, for every ``/api/*`` and ``/ws`` request:

1. authentication (401 ``unauthorized``) — before anything else (AEP/1 §1);
2. a body over 64 KiB, declared or chunked, whatever the method (413
   ``payload_too_large``): a body is read here, bounded, before any handler;
3. routing and method (404 ``not_found``, 405 ``method_not_allowed``);
4. key or thread id syntax (400 ``bad_request``);
5. a PUT body that is not a JSON object with a ``value`` member (400).

Every error is a JSON object ``{"error": <code>}``; an unexpected exception is
logged and answered ``500 {"error": "internal"}``, never with a traceback.
Unknown paths outside ``/api/`` need no token and are 404.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from harness.reference import faults as faults_module
from harness.reference.auth import Identity, decode_token, token_from
from harness.reference.connections import Connection
from harness.reference.dialect import LOGIN_TIMEOUT_S, REFUSED_CLOSE_CODE, Renamed, dialect
from harness.reference.metrics import CONTENT_TYPE_LATEST, Metrics
from harness.reference.protocol import (
    MAX_BODY_BYTES,
    MAX_FRAME_BYTES,
    BadFrame,
    Ping,
    UserMessage,
    valid_key,
)
from harness.reference.runs import RunSpec

log = logging.getLogger(__name__)

IDENTITY = web.RequestKey("identity", Identity)
BODY = web.RequestKey("body", bytes)
WS_CLOSE_TIMEOUT_S = 2.0

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLOSING = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


@dataclass(frozen=True, slots=True)
class Settings:
    """How one service instance behaves."""

    jwt_secret: str
    faults: frozenset[str] = frozenset()
    think_ms: tuple[int, int] = (2, 10)
    leak_kb: int = 64
    seed: int | None = None
    #: The ``/ws`` wire format: ``aep`` or ``renamed`` (see :mod:`harness.reference.dialect`).
    dialect: str = "aep"


def json_response(status: int, obj: Any) -> web.Response:
    """A JSON response."""
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def error_response(status: int) -> web.Response:
    """The protocol's JSON error body for ``status``."""
    return json_response(status, {"error": _ERROR_CODES.get(status, "internal")})


def _needs_auth(path: str) -> bool:
    return path == "/ws" or path == "/api" or path.startswith("/api/")


class Service:
    """One reference service: its parts, its handlers and its aiohttp application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.dialect = dialect(settings.dialect)
        self.parts = faults_module.assemble(
            settings.faults,
            think_ms=settings.think_ms,
            leak_kb=settings.leak_kb,
            metrics=self.metrics,
            rng=random.Random(settings.seed),
            encode_event=self.dialect.encode_event,
        )

    def application(self) -> web.Application:
        """The aiohttp application serving AEP/1."""
        app = web.Application(
            middlewares=[self._guard, *self.parts.middlewares],
            client_max_size=MAX_BODY_BYTES,
        )
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/ws", self.websocket)
        app.router.add_put("/api/state/{key:.*}", self.put_state)
        app.router.add_get("/api/state/{key:.*}", self.get_state)
        app.router.add_delete("/api/state/{key:.*}", self.delete_state)
        app.router.add_get("/api/threads", self.list_threads)
        app.router.add_get("/api/threads/{thread_id:.*}", self.get_thread)
        app.on_shutdown.append(self._shutdown)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, bound the body, and turn every failure into a JSON error."""
        try:
            # The renamed dialect's /ws takes its token from the first message.
            login = self.dialect.login and request.path == "/ws"
            if _needs_auth(request.path) and not login:
                token = token_from(
                    request.headers, request.query, allow_query=request.path == "/ws"
                )
                user = decode_token(token, self.settings.jwt_secret) if token else None
                if user is None:
                    return error_response(401)
                if (request.content_length or 0) > MAX_BODY_BYTES:
                    return error_response(413)
                if request.body_exists:
                    # Read here, bounded, whatever the method: a chunked body declares
                    # no length, and a handler that ignores bodies must not act on one.
                    body = await _read_body(request)
                    if body is None:
                        return error_response(413)
                    request[BODY] = body
                request[IDENTITY] = user
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_response(500, {"error": "internal"})

    # -- plain HTTP ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``ok`` once ready."""
        return web.Response(text="ok")

    async def metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (AEP/1 §5)."""
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # -- state --------------------------------------------------------------------------------

    async def put_state(self, request: web.Request) -> web.Response:
        """PUT ``{"value": <any JSON>}``: store it for this user."""
        user, key = request[IDENTITY], request.match_info["key"]
        if not valid_key(key):
            return error_response(400)
        try:
            doc = orjson.loads(request.get(BODY, b""))
        except orjson.JSONDecodeError:
            return error_response(400)
        if not isinstance(doc, dict) or "value" not in doc:
            return error_response(400)
        await self.parts.state.put(user, key, orjson.dumps(doc["value"]))
        return json_response(200, {"key": key, "value": doc["value"], "user_id": user.sub})

    async def get_state(self, request: web.Request) -> web.Response:
        """This user's value for ``key``, or 404."""
        user, key = request[IDENTITY], request.match_info["key"]
        if not valid_key(key):
            return error_response(400)
        raw = await self.parts.state.get(user, key)
        if raw is None:
            return error_response(404)
        return json_response(200, {"key": key, "value": orjson.loads(raw), "user_id": user.sub})

    async def delete_state(self, request: web.Request) -> web.Response:
        """Forget ``key`` for this user: 204 whether or not it was set."""
        user, key = request[IDENTITY], request.match_info["key"]
        if not valid_key(key):
            return error_response(400)
        await self.parts.state.delete(user, key)
        return web.Response(status=204)

    # -- threads ------------------------------------------------------------------------------

    async def list_threads(self, request: web.Request) -> web.Response:
        """This user's threads, oldest first."""
        threads = self.parts.threads.threads_of(request[IDENTITY])
        listing = [
            {"thread_id": t.thread_id, "message_ids": [m for m, _ in t.messages]} for t in threads
        ]
        return json_response(200, {"threads": listing})

    async def get_thread(self, request: web.Request) -> web.Response:
        """One of this user's threads with its messages, or 404."""
        thread_id = request.match_info["thread_id"]
        if not valid_key(thread_id):
            return error_response(400)
        thread = self.parts.threads.get(request[IDENTITY], thread_id)
        if thread is None:
            return error_response(404)
        messages = [{"message_id": m, "content": c} for m, c in thread.messages]
        return json_response(200, {"thread_id": thread.thread_id, "messages": messages})

    # -- the event stream ---------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """``/ws``: accept the upgrade and serve frames until the client leaves."""
        ws: web.WebSocketResponse[Any] = web.WebSocketResponse(
            max_msg_size=MAX_FRAME_BYTES, timeout=WS_CLOSE_TIMEOUT_S, compress=False
        )
        if not ws.can_prepare(request).ok:
            return error_response(400)
        await ws.prepare(request)
        user = request.get(IDENTITY)
        if user is None:
            user = await self._login(ws)
            if user is None:
                return ws
        conn = self.parts.lifecycle.open(user, ws)
        try:
            # Bounded by the connection's life: ends on close, error or shutdown.
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    reason = "binary frames are not accepted; send JSON text"
                    conn.send(self.dialect.error(self.parts.errors.message(reason)))
        finally:
            self.parts.lifecycle.close(conn)
        return ws

    async def _login(self, ws: web.WebSocketResponse[Any]) -> Identity | None:
        """The renamed dialect: the first frame must be a ``hello`` with a valid token."""
        try:
            msg = await ws.receive(timeout=LOGIN_TIMEOUT_S)
        except TimeoutError:
            why = f"no hello within {LOGIN_TIMEOUT_S:g}s"
        else:
            if msg.type in _CLOSING:
                return None  # the client left before saying hello
            token = Renamed.token_of(msg.data) if msg.type is WSMsgType.TEXT else None
            user = decode_token(token, self.settings.jwt_secret) if token else None
            if user is not None:
                try:
                    await ws.send_str(Renamed.ready(user.tenant, user.sub))
                except ConnectionError:
                    return None  # the client is gone already
                return user
            why = "unauthorized" if token else "expected hello with auth.bearer"
        try:
            await ws.send_str(Renamed.denied(why))
            await ws.close(code=REFUSED_CLOSE_CODE, message=b"unauthorized")
        except ConnectionError:
            pass  # the client is gone already
        return None

    def _on_text(self, conn: Connection, text: str) -> None:
        frame = self.dialect.decode(text)
        if isinstance(frame, Ping):
            conn.send(self.dialect.pong)
        elif isinstance(frame, BadFrame):
            conn.send(self.dialect.error(self.parts.errors.message(frame.reason)))
        elif isinstance(frame, UserMessage):
            self.parts.errors.accepted(text)
            self._accept(conn, frame)

    def _accept(self, conn: Connection, message: UserMessage) -> None:
        history = self.parts.threads.append(
            conn.user, message.thread_id, message.message_id, message.content
        )
        spec = RunSpec(
            owner=conn.user,
            thread_id=message.thread_id,
            message_id=message.message_id,
            content=message.content,
            run_id=uuid.uuid4().hex,
            history=tuple(history),
        )
        task = self.parts.runner.start(spec)
        conn.runs.add(task)
        task.add_done_callback(conn.runs.discard)

    async def _shutdown(self, app: web.Application) -> None:
        conns = self.parts.registry.all()
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down") for c in conns),
            return_exceptions=True,
        )
        await self.parts.runner.aclose()
        await self.parts.publisher.aclose()
        await self.parts.lifecycle.aclose()
        await self.parts.state.aclose()


async def _read_body(request: web.Request) -> bytes | None:
    """The request body, or None when it exceeds ``MAX_BODY_BYTES``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
