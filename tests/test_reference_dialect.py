"""``--dialect renamed``: the reference service in other words, faults and all.

Only the ``/ws`` wire format changes: the token comes in a ``hello`` first
message, every field is renamed and nested differently, and so are the event
types and the client's frames (``harness/reference/dialect.py``). The HTTP API
and every fault mode stay as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from reference_helpers import Services, User, http, open_ws, recv_json, running_services, seconds
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

RENAMED = ("--dialect", "renamed")
TYPES = ("run.start", "run.think", "tool.call", "tool.done", "run.end")


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with running_services() as started:
        yield started


def renamed(services: Services, *faults: str) -> str:
    return services.get(*faults, extra_args=RENAMED).url


def say(message_id: str, content: str = "hello", thread: str = "main") -> str:
    return orjson.dumps({"op": "say", "conv": thread, "msg": message_id, "text": content}).decode()


def hello(token: str) -> str:
    return orjson.dumps({"op": "hello", "auth": {"bearer": token}}).decode()


async def login(ws: ClientConnection, user: User) -> dict[str, Any]:
    await ws.send(hello(user.token()))
    return await recv_json(ws)


async def run_of(ws: ClientConnection, message_id: str) -> list[dict[str, Any]]:
    """Frames until ``message_id``'s ``run.end`` (or 3 s)."""
    frames: list[dict[str, Any]] = []
    while not any(f.get("kind") == "run.end" and f.get("msg") == message_id for f in frames):
        frames.append(await recv_json(ws, 3))
    return frames


def test_a_hello_with_a_valid_token_opens_a_session_that_streams_renamed_events(services):
    async def body() -> None:
        alice = User("t1", "alice")
        async with open_ws(renamed(services)) as ws:
            assert await login(ws, alice) == {
                "kind": "hello.ok",
                "who": {"uid": "alice", "org": "t1"},
            }
            await ws.send(say("m1", "first"))
            frames = await run_of(ws, "m1")
        kinds = [f["kind"] for f in frames]
        assert kinds[0] == "run.start"
        assert kinds[-3:] == ["tool.call", "tool.done", "run.end"]
        assert set(kinds[1:-3]) == {"run.think"}
        assert [f["n"] for f in frames] == list(range(1, len(frames) + 1))
        assert {f["run"] for f in frames} == {frames[0]["run"]}
        for f in frames:
            assert set(f) == {"kind", "who", "conv", "msg", "run", "n", "body"}
            assert (f["who"], f["conv"], f["msg"]) == ({"uid": "alice", "org": "t1"}, "main", "m1")
        assert frames[-1]["body"] == {"result": "first", "history": ["m1"]}

    asyncio.run(body())


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (hello("not-a-token"), "unauthorized"),
        (
            hello(User("t1", "x").token(secret="another-secret-of-at-least-32-bytes!")),
            "unauthorized",
        ),
        ('{"op": "hello"}', "expected hello with auth.bearer"),
        (say("m1"), "expected hello with auth.bearer"),
        ("not json", "expected hello with auth.bearer"),
    ],
    ids=["garbage", "wrong-secret", "no-auth", "say-first", "not-json"],
)
def test_anything_but_a_valid_hello_first_is_denied_and_closed_with_4401(services, first, why):
    async def body() -> None:
        # A valid token in the handshake does not count in this dialect.
        async with open_ws(renamed(services), User("t1", "x")) as ws:
            await ws.send(first)
            assert await recv_json(ws) == {"kind": "hello.denied", "why": why}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), seconds(2))
        assert ws.close_code == 4401

    asyncio.run(body())


def test_ping_and_bad_frames_are_answered_in_the_dialect(services):
    async def body() -> None:
        async with open_ws(renamed(services)) as ws:
            await login(ws, User("t1", "bob"))
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"kind": "pong"}
            await ws.send('{"type": "user_message"}')
            assert await recv_json(ws) == {
                "kind": "oops",
                "code": "bad_request",
                "detail": "unknown op 'None'",
            }
            await ws.send('{"op": "say", "conv": "main", "msg": "m1"}')
            assert (await recv_json(ws))["detail"] == "say needs a string field 'text'"
            await ws.send('{"op": "say", "conv": "main", "msg": "", "text": "x"}')
            assert (await recv_json(ws))["detail"] == "msg is empty"
            await ws.send(b"\x00")
            assert (await recv_json(ws))["kind"] == "oops"

    asyncio.run(body())


def test_the_http_api_is_unchanged_and_sees_the_renamed_messages(services):
    async def body() -> None:
        base, carol = renamed(services), User("t2", "carol")
        async with open_ws(base) as ws:
            await login(ws, carol)
            await ws.send(say("c1", "note", thread="notes"))
            await run_of(ws, "c1")
        async with aiohttp.ClientSession() as session:
            status, doc = await http(session, "GET", base + "/api/threads/notes", carol)
        assert (status, doc["messages"]) == (200, [{"message_id": "c1", "content": "note"}])

    asyncio.run(body())


async def foreign_frames(base: str, users: list[User], messages: int) -> list[dict[str, Any]]:
    """Each user says ``messages`` things at once; the events received of another user's runs."""

    async def one(user: User) -> list[dict[str, Any]]:
        async with open_ws(base) as ws:
            await login(ws, user)
            sent = [f"{user.tenant}.{user.sub}.m{n}" for n in range(messages)]
            for message_id in sent:
                await ws.send(say(message_id))
            frames: list[dict[str, Any]] = []
            try:
                while True:
                    frames.append(await recv_json(ws, 1.0))
            except TimeoutError:
                pass
        return [f for f in frames if f.get("kind") in TYPES and f["msg"] not in sent]

    results = await asyncio.gather(*(one(u) for u in users))
    return [f for found in results for f in found]


@pytest.mark.parametrize(
    ("fault", "users"),
    [
        ("singleton_emitter", [User("t1", "emit-a"), User("t2", "emit-b")]),
        ("tenant_broadcast", [User("t1", "bc-a"), User("t1", "bc-b")]),
        (None, [User("t1", "ok-a"), User("t1", "ok-b"), User("t2", "ok-a")]),
    ],
    ids=["singleton_emitter", "tenant_broadcast", "clean"],
)
def test_faults_that_misroute_events_still_do_in_the_dialect(services, fault, users):
    base = renamed(services, *([fault] if fault else []))
    foreign = asyncio.run(foreign_frames(base, users, messages=4))
    assert bool(foreign) == (fault is not None)
