"""Client-side helpers for the reference service's tests: tokens, services, conversations.

Everything here is a plain function or class over real sockets; the tests run
them inside ``asyncio.run`` (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect

from harness.embedded import EmbeddedService

SECRET = "reference-test-secret-of-at-least-32-bytes"
#: Scales every time limit (slow CI: ISOHARNESS_TEST_TIME_FACTOR=3).
TIME_FACTOR = float(os.environ.get("ISOHARNESS_TEST_TIME_FACTOR", "1"))
LIFECYCLE = ("agent_started", "agent_thinking", "tool_executing", "tool_completed")


def seconds(value: float) -> float:
    """A time limit scaled by ``TIME_FACTOR``."""
    return value * TIME_FACTOR


@dataclass(frozen=True)
class User:
    """A test user: the pair (tenant, sub)."""

    tenant: str
    sub: str

    def token(self, *, ttl_s: float = 600, secret: str = SECRET) -> str:
        """A valid HS256 token for this user."""
        claims = {"sub": self.sub, "tenant": self.tenant, "exp": int(time.time() + ttl_s)}
        return jwt.encode(claims, secret, algorithm="HS256")

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.token()}"}


class Services:
    """Starts reference services on demand, one per configuration, and stops them all."""

    def __init__(self) -> None:
        self._running: dict[tuple[Any, ...], EmbeddedService] = {}

    def get(
        self,
        *faults: str,
        think_ms: tuple[int, int] | None = None,
        extra_args: Sequence[str] = (),
    ) -> EmbeddedService:
        """A running service with these faults and think time (shared by identical asks)."""
        key = (tuple(sorted(faults)), think_ms, tuple(extra_args))
        if key not in self._running:
            service = EmbeddedService(
                jwt_secret=SECRET, faults=faults, think_ms=think_ms, extra_args=extra_args
            )
            service.start()
            self._running[key] = service
        return self._running[key]

    def stop_all(self) -> list[str]:
        """Stop every service started here; return the lines of their output that
        report an error (a service must never log a traceback on bad input)."""
        errors = []
        for service in self._running.values():
            code = service.stop()
            if code != 0:
                errors.append(f"{service.url} exited with {code}")
            errors += [line for line in service.output if "Traceback" in line or " ERROR " in line]
        self._running.clear()
        return errors


@contextmanager
def running_services() -> Iterator[Services]:
    """A :class:`Services` that stops everything on exit and fails if a service
    exited uncleanly or logged an error."""
    services = Services()
    try:
        yield services
    finally:
        errors = services.stop_all()
    assert errors == [], "the reference service reported errors"


def ws_url(base: str) -> str:
    """The ``/ws`` URL of a base URL."""
    return base.replace("http://", "ws://", 1) + "/ws"


def open_ws(base: str, user: User | None = None, **kwargs: Any) -> connect:
    """``websockets`` connect to ``/ws`` with ``user``'s token in the header."""
    headers = user.headers if user is not None else {}
    return connect(
        ws_url(base),
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=seconds(5),
        **kwargs,
    )


async def recv_json(ws: ClientConnection, wait_s: float = 2.0) -> dict[str, Any]:
    """The next frame, decoded; TimeoutError after ``wait_s`` (scaled) seconds."""
    return await _recv(ws, seconds(wait_s))


async def _recv(ws: ClientConnection, real_s: float) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), real_s)
    assert isinstance(raw, str), f"binary frame from the service: {raw!r}"
    obj = orjson.loads(raw)
    assert isinstance(obj, dict)
    return obj


def user_message(message_id: str, content: str = "hello", thread_id: str = "main") -> str:
    """A ``user_message`` frame."""
    return orjson.dumps(
        {
            "type": "user_message",
            "message_id": message_id,
            "thread_id": thread_id,
            "content": content,
        }
    ).decode()


async def collect(
    ws: ClientConnection, *, until_completed: Sequence[str] = (), deadline: float = 3.0
) -> list[dict[str, Any]]:
    """Frames received until every message in ``until_completed`` has its
    ``agent_completed``, or until ``deadline`` seconds have passed."""
    frames: list[dict[str, Any]] = []
    waiting = set(until_completed)
    end = time.monotonic() + seconds(deadline)
    while (waiting or not until_completed) and (left := end - time.monotonic()) > 0:
        try:
            frame = await _recv(ws, left)
        except TimeoutError:
            break
        frames.append(frame)
        if frame.get("type") == "agent_completed" and frame.get("user_id") is not None:
            waiting.discard(frame["message_id"])
    return frames


@dataclass
class Seen:
    """What one connection of one user sent and received."""

    user: User
    sent: list[str] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The lifecycle events among the frames."""
        return [f for f in self.frames if f.get("type") in (*LIFECYCLE, "agent_completed")]


async def converse(
    base: str,
    users: Sequence[User],
    *,
    messages: int,
    thread_id: str = "main",
    deadline: float = 3.0,
) -> list[Seen]:
    """Each user opens one connection and sends ``messages`` messages at once
    (overlapping runs); all users do so concurrently. Each connection then reads
    until its own runs completed or ``deadline`` passed."""

    async def one(index: int, user: User) -> Seen:
        seen = Seen(user)
        async with open_ws(base, user) as ws:
            for n in range(messages):
                message_id = f"{user.tenant}.{user.sub}.m{n}"
                seen.sent.append(message_id)
                await ws.send(user_message(message_id, f"content of {message_id}", thread_id))
            seen.frames = await collect(ws, until_completed=seen.sent, deadline=deadline)
        return seen

    return list(await asyncio.gather(*(one(i, u) for i, u in enumerate(users))))


# -- checks over what a connection saw ------------------------------------------------------


def foreign_events(seen: Seen) -> list[dict[str, Any]]:
    """Events on this connection that belong to another user (AEP/1 §4)."""
    me = (seen.user.tenant, seen.user.sub)
    return [e for e in seen.events if (e["tenant_id"], e["user_id"]) != me]


def duplicate_events(seen: Seen) -> list[tuple[str, int]]:
    """(run_id, seq) pairs received more than once."""
    counts = Counter((e["run_id"], e["seq"]) for e in seen.events)
    return [key for key, n in counts.items() if n > 1]


def runs_by_message(seen: Seen) -> dict[str, list[dict[str, Any]]]:
    """This user's events grouped by message id, in arrival order."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in seen.events:
        if event["message_id"] in seen.sent:
            runs[event["message_id"]].append(event)
    return runs


def incomplete_runs(seen: Seen) -> list[str]:
    """Messages this connection sent whose run it did not see whole and in order."""
    bad = []
    for message_id in seen.sent:
        events = runs_by_message(seen).get(message_id, [])
        if [e["seq"] for e in events] != list(range(1, len(events) + 1)) or not events:
            bad.append(message_id)
            continue
        kinds = [e["type"] for e in events]
        thinking = len(kinds) - 4
        expected = ["agent_started", *["agent_thinking"] * thinking]
        expected += ["tool_executing", "tool_completed", "agent_completed"]
        if thinking < 1 or kinds != expected:
            bad.append(message_id)
    return bad


def misordered_runs(seen: Seen) -> list[str]:
    """Runs whose events arrived with ``seq`` not increasing."""
    return [
        run_id
        for run_id, seqs in _seqs_by_run(seen).items()
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False))
    ]


def _seqs_by_run(seen: Seen) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for event in seen.events:
        seqs[event["run_id"]].append(event["seq"])
    return seqs


# -- HTTP ----------------------------------------------------------------------------------


async def http(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    user: User | None = None,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body or text or None)."""
    all_headers = dict(user.headers if user is not None else {})
    all_headers.update(headers or {})
    async with session.request(method, url, headers=all_headers, **kwargs) as resp:
        body = await resp.read()
        if not body:
            return resp.status, None
        if resp.content_type == "application/json":
            return resp.status, orjson.loads(body)
        return resp.status, body.decode()


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    """The value of an unlabelled metric from ``/metrics``."""
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not in /metrics")


async def wait_for_metric(
    session: aiohttp.ClientSession, base: str, name: str, value: float, wait_s: float = 3.0
) -> float:
    """Poll ``name`` until it equals ``value`` or ``wait_s`` passes; return the last value."""
    end = time.monotonic() + seconds(wait_s)
    current = await metric(session, base, name)
    while current != value and time.monotonic() < end:
        await asyncio.sleep(0.05)
        current = await metric(session, base, name)
    return current
