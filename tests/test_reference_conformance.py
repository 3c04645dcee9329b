"""The reference service keeps every rule of AEP/1 (/work/shared/PROTOCOL.md).

Each test drives a real service process (``EmbeddedService`` on a free loopback
port) with real clients: ``websockets`` for ``/ws``, aiohttp for HTTP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import orjson
import psutil
import pytest
from reference_helpers import (
    SECRET,
    Seen,
    Services,
    User,
    collect,
    converse,
    duplicate_events,
    foreign_events,
    http,
    incomplete_runs,
    metric,
    misordered_runs,
    open_ws,
    recv_json,
    running_services,
    seconds,
    user_message,
    wait_for_metric,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.embedded import EmbeddedService
from harness.reference.__main__ import main

ALICE = User("acme", "alice")
BOB = User("acme", "bob")
ALICE_ELSEWHERE = User("globex", "alice")  # same sub, another tenant: another user


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with running_services() as started:
        yield started


@pytest.fixture(scope="module")
def base(services: Services) -> str:
    return services.get().url


@pytest.fixture(scope="module")
def slow_base(services: Services) -> str:
    """A service whose runs take a few hundred milliseconds."""
    return services.get(think_ms=(60, 80)).url


def _token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _future() -> int:
    return int(time.time()) + 600


BAD_AUTH_HEADERS: dict[str, dict[str, str]] = {
    "missing": {},
    "empty bearer": {"Authorization": "Bearer "},
    "not a bearer": {"Authorization": f"Basic {ALICE.token()}"},
    "malformed": {"Authorization": "Bearer not.a.jwt"},
    "garbage": {"Authorization": "Bearer &&%%!!"},
    "expired": {
        "Authorization": "Bearer "
        + _token({"sub": "alice", "tenant": "acme", "exp": int(time.time()) - 10})
    },
    "wrong signature": {
        "Authorization": "Bearer "
        + _token(
            {"sub": "alice", "tenant": "acme", "exp": _future()},
            secret="another-secret-of-at-least-32-bytes",
        )
    },
    "no exp": {"Authorization": "Bearer " + _token({"sub": "alice", "tenant": "acme"})},
    "no tenant": {"Authorization": "Bearer " + _token({"sub": "alice", "exp": _future()})},
    "no sub": {"Authorization": "Bearer " + _token({"tenant": "acme", "exp": _future()})},
    "empty sub": {
        "Authorization": "Bearer " + _token({"sub": "", "tenant": "acme", "exp": _future()})
    },
    "numeric tenant": {
        "Authorization": "Bearer " + _token({"sub": "alice", "tenant": 7, "exp": _future()})
    },
    "alg none": {
        "Authorization": "Bearer "
        + jwt.encode({"sub": "alice", "tenant": "acme", "exp": _future()}, None, algorithm="none")
    },
}

API_REQUESTS = [
    ("GET", "/api/state/profile"),
    ("PUT", "/api/state/profile"),
    ("DELETE", "/api/state/profile"),
    ("GET", "/api/threads"),
    ("GET", "/api/threads/main"),
]


# -- health and metrics --------------------------------------------------------------------


def test_healthz_answers_ok_without_a_token(base: str) -> None:
    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await http(session, "GET", base + "/healthz")

    assert asyncio.run(scenario()) == (200, "ok")


def test_metrics_expose_every_required_series(base: str) -> None:
    async def scenario() -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            names = [
                "process_resident_memory_bytes",
                "aep_connections_active",
                "aep_runs_active",
                "aep_sessions_total",
                "aep_events_sent_total",
            ]
            return {name: await metric(session, base, name) for name in names}

    values = asyncio.run(scenario())
    assert values["process_resident_memory_bytes"] > 1_000_000
    assert values["aep_connections_active"] >= 0


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BAD_AUTH_HEADERS))
def test_api_refuses_a_bad_token_with_401_json(base: str, case: str) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            return [
                await http(
                    session, method, base + path, headers=BAD_AUTH_HEADERS[case], json={"value": 1}
                )
                for method, path in API_REQUESTS
            ]

    assert asyncio.run(scenario()) == [(401, {"error": "unauthorized"})] * len(API_REQUESTS)


def test_authentication_is_checked_before_anything_else(base: str) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            return [
                await http(session, "GET", base + "/api/state/bad%20key"),
                await http(session, "PUT", base + "/api/state/k", data=b"x" * 70_000),
                await http(session, "PUT", base + "/api/state/k", data=b"not json"),
                await http(session, "GET", base + "/api/threads/never-used"),
                await http(session, "GET", base + "/api/no-such-endpoint"),
                await http(session, "POST", base + "/api/state/k"),
            ]

    assert asyncio.run(scenario()) == [(401, {"error": "unauthorized"})] * 6


def test_a_token_in_the_query_string_is_not_accepted_over_plain_http(base: str) -> None:
    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await http(session, "GET", f"{base}/api/threads?token={ALICE.token()}")

    assert asyncio.run(scenario()) == (401, {"error": "unauthorized"})


@pytest.mark.parametrize("case", sorted(BAD_AUTH_HEADERS))
def test_ws_handshake_with_a_bad_header_token_is_refused_with_401(base: str, case: str) -> None:
    async def scenario() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(base), additional_headers=BAD_AUTH_HEADERS[case], proxy=None):
                pass
        return info.value

    refusal = asyncio.run(scenario())
    assert refusal.response.status_code == 401
    assert orjson.loads(refusal.response.body or b"") == {"error": "unauthorized"}


@pytest.mark.parametrize("case", ["empty", "malformed", "expired", "wrong signature", "no exp"])
def test_ws_handshake_with_a_bad_query_token_is_refused_with_401(base: str, case: str) -> None:
    header = BAD_AUTH_HEADERS.get(case, {"Authorization": "Bearer "})["Authorization"]
    token = header.removeprefix("Bearer ")

    async def scenario() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{ws_url(base)}?token={token}", proxy=None):
                pass
        return info.value

    refusal = asyncio.run(scenario())
    assert refusal.response.status_code == 401
    assert orjson.loads(refusal.response.body or b"") == {"error": "unauthorized"}


def test_ws_accepts_the_token_as_a_query_parameter(base: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(f"{ws_url(base)}?token={ALICE.token()}", proxy=None) as ws:
            await ws.send('{"type": "ping"}')
            return await recv_json(ws)

    assert asyncio.run(scenario()) == {"type": "pong"}


def test_an_open_connection_outlives_its_token(base: str) -> None:
    token = ALICE.token(ttl_s=2)
    expires = jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]

    async def scenario() -> dict[str, Any]:
        async with connect(f"{ws_url(base)}?token={token}", proxy=None) as ws:
            await asyncio.sleep(max(0.0, expires - time.time() + 0.3))
            await ws.send('{"type": "ping"}')
            return await recv_json(ws)

    assert asyncio.run(scenario()) == {"type": "pong"}


# -- state ---------------------------------------------------------------------------------


def test_state_put_get_delete_round_trip(base: str) -> None:
    user = User("acme", "roundtrip")
    url = base + "/api/state/profile"
    value = {"name": "R", "tags": [1, 2.5, None, True], "nested": {"x": "é"}}

    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            return [
                await http(session, "PUT", url, user, json={"value": value}),
                await http(session, "GET", url, user),
                await http(session, "PUT", url, user, json={"value": None}),
                await http(session, "GET", url, user),
                await http(session, "DELETE", url, user),
                await http(session, "GET", url, user),
                await http(session, "DELETE", url, user),
            ]

    stored = {"key": "profile", "value": value, "user_id": "roundtrip"}
    nulled = {"key": "profile", "value": None, "user_id": "roundtrip"}
    assert asyncio.run(scenario()) == [
        (200, stored),
        (200, stored),
        (200, nulled),
        (200, nulled),
        (204, None),
        (404, {"error": "not_found"}),
        (204, None),
    ]


def test_state_is_per_user_for_the_same_key(base: str) -> None:
    users = [User("acme", "s1"), User("acme", "s2"), User("other", "s1")]
    url = base + "/api/state/shared:key"

    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            for user in users:
                await http(session, "PUT", url, user, json={"value": f"{user.tenant}/{user.sub}"})
            await http(session, "DELETE", url, users[0])
            return [await http(session, "GET", url, user) for user in users]

    assert asyncio.run(scenario()) == [
        (404, {"error": "not_found"}),
        (200, {"key": "shared:key", "value": "acme/s2", "user_id": "s2"}),
        (200, {"key": "shared:key", "value": "other/s1", "user_id": "s1"}),
    ]


@pytest.mark.parametrize(
    "raw_key",
    ["bad%20key", "a%2Fb", "a/b", "%C3%A9", "k" * 129, "semi;colon", "a%3Fb", ""],
)
def test_a_bad_key_is_400(base: str, raw_key: str) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/" + raw_key
            return [
                await http(session, "PUT", url, ALICE, json={"value": 1}),
                await http(session, "GET", url, ALICE),
                await http(session, "DELETE", url, ALICE),
                await http(session, "GET", base + "/api/threads/" + raw_key, ALICE),
            ]

    assert asyncio.run(scenario()) == [(400, {"error": "bad_request"})] * 4


def test_every_allowed_key_character_and_128_characters_are_accepted(base: str) -> None:
    keys = ["AZaz09._:-", "k" * 128, "x"]

    async def scenario() -> list[int]:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for key in keys:
                url = f"{base}/api/state/{key}"
                statuses.append((await http(session, "PUT", url, ALICE, json={"value": key}))[0])
                statuses.append((await http(session, "GET", url, ALICE))[0])
            return statuses

    assert asyncio.run(scenario()) == [200] * 6


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'"value"', b'{"val": 1}', b"{'value': 1}", b"\xff"]
)
def test_a_put_body_that_is_not_an_object_with_a_value_is_400(base: str, body: bytes) -> None:
    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await http(session, "PUT", base + "/api/state/k", ALICE, data=body)

    assert asyncio.run(scenario()) == (400, {"error": "bad_request"})


def test_a_body_over_64_kib_is_413_and_64_kib_is_accepted(base: str) -> None:
    def body(size: int) -> bytes:
        prefix, suffix = b'{"value": "', b'"}'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    async def chunked(size: int) -> Any:
        yield body(size)

    async def scenario() -> list[int]:
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/big"
            return [
                (await http(session, "PUT", url, ALICE, data=body(64 * 1024)))[0],
                (await http(session, "PUT", url, ALICE, data=body(64 * 1024 + 1)))[0],
                (await http(session, "PUT", url, ALICE, data=chunked(64 * 1024 + 1)))[0],
                (await http(session, "GET", url, ALICE, data=body(64 * 1024 + 1)))[0],
                # A chunked body declares no length, whatever the method: refused
                # before the request does anything (the key is still there after).
                (await http(session, "GET", url, ALICE, data=chunked(64 * 1024 + 1)))[0],
                (await http(session, "DELETE", url, ALICE, data=chunked(64 * 1024 + 1)))[0],
                (await http(session, "GET", url, ALICE))[0],
            ]

    assert asyncio.run(scenario()) == [200, 413, 413, 413, 413, 413, 200]


def test_unknown_paths_and_methods_get_json_errors(base: str) -> None:
    async def scenario() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as session:
            return [
                await http(session, "GET", base + "/nowhere"),
                await http(session, "POST", base + "/api/state/k", ALICE),
                await http(session, "GET", base + "/api/nowhere", ALICE),
                await http(session, "GET", base + "/ws", ALICE),
            ]

    assert asyncio.run(scenario()) == [
        (404, {"error": "not_found"}),
        (405, {"error": "method_not_allowed"}),
        (404, {"error": "not_found"}),
        (400, {"error": "bad_request"}),
    ]


# -- the event stream ----------------------------------------------------------------------


def test_a_run_streams_five_kinds_of_event_in_order_with_every_field(base: str) -> None:
    user = User("acme", "fields")

    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(base, user) as ws:
            await ws.send(user_message("m-1", "what is 2+2?", "fields-thread"))
            return await collect(ws, until_completed=["m-1"])

    events = asyncio.run(scenario())
    kinds = [e["type"] for e in events]
    assert kinds[0] == "agent_started"
    assert kinds[-3:] == ["tool_executing", "tool_completed", "agent_completed"]
    assert set(kinds[1:-3]) == {"agent_thinking"}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    run_id = events[0]["run_id"]
    assert isinstance(run_id, str)
    assert run_id
    for event in events:
        assert list(event) == [
            "type", "user_id", "tenant_id", "thread_id", "message_id", "run_id", "seq", "data",
        ]  # fmt: skip
        assert (event["user_id"], event["tenant_id"]) == ("fields", "acme")
        assert (event["thread_id"], event["message_id"], event["run_id"]) == (
            "fields-thread", "m-1", run_id,
        )  # fmt: skip
    content = "what is 2+2?"
    assert events[0]["data"] == {}
    assert all(content in e["data"]["thought"] for e in events[1:-3])
    assert events[-3]["data"] == {"tool": "echo", "input": content}
    assert events[-2]["data"] == {"tool": "echo", "output": content}
    assert events[-1]["data"] == {"result": content, "history": ["m-1"]}


def test_each_run_has_its_own_run_id_and_seq_from_1(base: str) -> None:
    user = User("acme", "seq")
    [seen] = asyncio.run(converse(base, [user], messages=5))
    assert incomplete_runs(seen) == []
    run_ids = {e["message_id"]: e["run_id"] for e in seen.events}
    assert len(set(run_ids.values())) == 5
    assert misordered_runs(seen) == []


def test_ping_is_answered_with_pong(base: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(base, ALICE) as ws:
            for _ in range(3):
                await ws.send('{"type": "ping", "extra": "ignored"}')
            return [await recv_json(ws) for _ in range(3)]

    assert asyncio.run(scenario()) == [{"type": "pong"}] * 3


BAD_FRAMES: dict[str, str | bytes] = {
    "invalid JSON": "{not json",
    "truncated JSON": '{"type": "ping"',
    "array": '["ping"]',
    "string": '"ping"',
    "number": "42",
    "null": "null",
    "unknown type": '{"type": "shout"}',
    "no type": '{"message_id": "x", "thread_id": "t", "content": "c"}',
    "missing message_id": '{"type": "user_message", "thread_id": "t", "content": "c"}',
    "missing thread_id": '{"type": "user_message", "message_id": "m", "content": "c"}',
    "missing content": '{"type": "user_message", "message_id": "m", "thread_id": "t"}',
    "empty message_id": '{"type": "user_message", "message_id": "", "thread_id": "t", '
    '"content": "c"}',
    "empty thread_id": '{"type": "user_message", "message_id": "m", "thread_id": "", '
    '"content": "c"}',
    "numeric content": '{"type": "user_message", "message_id": "m", "thread_id": "t", '
    '"content": 5}',
    "thread_id outside the key rule": '{"type": "user_message", "message_id": "m", '
    '"thread_id": "a/b", "content": "c"}',
    "content over 16 KiB": user_message("m", "x" * (16 * 1024 + 1)),
    "content over 16 KiB of UTF-8": user_message("m", "€" * 5462),  # 16,386 bytes
    "binary frame": b'{"type": "ping"}',
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_a_bad_frame_gets_an_error_and_the_connection_stays_open(base: str, case: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(base, User("acme", "badframes")) as ws:
            await ws.send(BAD_FRAMES[case])
            error = await recv_json(ws)
            await ws.send('{"type": "ping"}')
            return [error, await recv_json(ws)]

    error, pong = asyncio.run(scenario())
    assert error["type"] == "error"
    assert error["code"] == "bad_request"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    assert pong == {"type": "pong"}


def test_content_of_exactly_16_kib_of_utf8_is_accepted(base: str) -> None:
    content = "€" * 5461 + "x"  # 16,384 bytes

    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(base, User("acme", "big")) as ws:
            await ws.send(user_message("m-big", content))
            return await collect(ws, until_completed=["m-big"])

    events = asyncio.run(scenario())
    assert events[-1]["type"] == "agent_completed"
    assert events[-1]["data"]["result"] == content


def test_a_frame_over_64_kib_may_close_the_connection_with_1009(base: str) -> None:
    async def scenario() -> int | None:
        async with open_ws(base, ALICE) as ws:
            await ws.send(user_message("m", "x" * 70_000))
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(scenario()) == 1009


def test_history_lists_this_users_messages_in_the_thread_oldest_first(base: str) -> None:
    user, other = User("acme", "historian"), User("acme", "intruder")

    async def scenario() -> list[list[str]]:
        histories = []
        async with open_ws(base, other) as ws:
            await ws.send(user_message("o-1", thread_id="t1"))
            await collect(ws, until_completed=["o-1"])
        async with open_ws(base, user) as ws:
            for message_id, thread_id in [("a", "t1"), ("b", "t1"), ("x", "t2"), ("c", "t1")]:
                await ws.send(user_message(message_id, thread_id=thread_id))
                events = await collect(ws, until_completed=[message_id])
                histories.append(events[-1]["data"]["history"])
        return histories

    assert asyncio.run(scenario()) == [["a"], ["a", "b"], ["x"], ["a", "b", "c"]]


def test_history_of_overlapping_runs_is_fixed_at_acceptance(base: str) -> None:
    user = User("acme", "overlap")

    async def scenario() -> dict[str, list[str]]:
        async with open_ws(base, user) as ws:
            for message_id in ["p", "q", "r", "s"]:
                await ws.send(user_message(message_id, thread_id="busy"))
            frames = await collect(ws, until_completed=["p", "q", "r", "s"])
        return {
            f["message_id"]: f["data"]["history"] for f in frames if f["type"] == "agent_completed"
        }

    assert asyncio.run(scenario()) == {
        "p": ["p"],
        "q": ["p", "q"],
        "r": ["p", "q", "r"],
        "s": ["p", "q", "r", "s"],
    }


def test_threads_api_shows_only_the_users_own_threads(base: str) -> None:
    owner, other = User("acme", "threader"), User("acme", "snooper")

    async def scenario() -> list[tuple[int, Any]]:
        async with open_ws(base, owner) as ws:
            for message_id, thread_id in [("m1", "alpha"), ("m2", "beta"), ("m3", "alpha")]:
                await ws.send(user_message(message_id, f"text {message_id}", thread_id))
            await collect(ws, until_completed=["m1", "m2", "m3"])
        async with aiohttp.ClientSession() as session:
            return [
                await http(session, "GET", base + "/api/threads", owner),
                await http(session, "GET", base + "/api/threads/alpha", owner),
                await http(session, "GET", base + "/api/threads", other),
                await http(session, "GET", base + "/api/threads/alpha", other),
                await http(session, "GET", base + "/api/threads/gamma", owner),
            ]

    assert asyncio.run(scenario()) == [
        (
            200,
            {
                "threads": [
                    {"thread_id": "alpha", "message_ids": ["m1", "m3"]},
                    {"thread_id": "beta", "message_ids": ["m2"]},
                ]
            },
        ),
        (
            200,
            {
                "thread_id": "alpha",
                "messages": [
                    {"message_id": "m1", "content": "text m1"},
                    {"message_id": "m3", "content": "text m3"},
                ],
            },
        ),
        (200, {"threads": []}),
        (404, {"error": "not_found"}),
        (404, {"error": "not_found"}),
    ]


def test_the_same_sub_in_two_tenants_is_two_isolated_users(base: str) -> None:
    async def scenario() -> tuple[list[Seen], list[tuple[int, Any]]]:
        seen = await converse(base, [ALICE, ALICE_ELSEWHERE], messages=4, thread_id="same")
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/tenancy"
            await http(session, "PUT", url, ALICE, json={"value": "acme"})
            await http(session, "PUT", url, ALICE_ELSEWHERE, json={"value": "globex"})
            reads = [
                await http(session, "GET", url, ALICE),
                await http(session, "GET", url, ALICE_ELSEWHERE),
                await http(session, "GET", base + "/api/threads/same", ALICE_ELSEWHERE),
            ]
        return seen, reads

    seen, reads = asyncio.run(scenario())
    for one in seen:
        assert foreign_events(one) == []
        assert incomplete_runs(one) == []
        histories = [e["data"]["history"] for e in one.events if e["type"] == "agent_completed"]
        assert all(set(h) <= set(one.sent) for h in histories)
    assert [r[1]["value"] for r in reads[:2]] == ["acme", "globex"]
    assert [m["message_id"] for m in reads[2][1]["messages"]] == seen[1].sent


def test_concurrent_users_each_get_exactly_their_own_events(base: str) -> None:
    users = [User(f"t{i % 2}", f"u{i}") for i in range(6)]
    for one in asyncio.run(converse(base, users, messages=6, thread_id="main")):
        assert foreign_events(one) == []
        assert duplicate_events(one) == []
        assert incomplete_runs(one) == []
        assert misordered_runs(one) == []


def test_every_connection_of_a_user_gets_every_event_of_their_runs(base: str) -> None:
    user, bystander = User("acme", "multi"), User("acme", "bystander")

    async def scenario() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with (
            open_ws(base, user) as first,
            open_ws(base, user) as second,
            open_ws(base, user) as third,
            open_ws(base, bystander) as other,
        ):
            await second.send(user_message("from-second"))
            await third.send(user_message("from-third"))
            done = ["from-second", "from-third"]
            received = [await collect(ws, until_completed=done) for ws in (first, second, third)]
            return received, await collect(other, deadline=0.3)

    received, bystanders = asyncio.run(scenario())
    assert bystanders == []
    for frames in received:
        seen = Seen(user, sent=["from-second", "from-third"], frames=frames)
        assert incomplete_runs(seen) == []
        assert duplicate_events(seen) == []
    assert [len(f) for f in received] == [len(received[0])] * 3


def test_a_connection_opened_mid_run_gets_the_rest_of_the_run(slow_base: str) -> None:
    user = User("acme", "latecomer")

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with open_ws(slow_base, user) as early:
            await early.send(user_message("m"))
            first = await recv_json(early)
            async with open_ws(slow_base, user) as late:
                rest = await collect(early, until_completed=["m"])
                return [first, *rest], await collect(late, until_completed=["m"])

    whole, tail = asyncio.run(scenario())
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
    assert tail, "the late connection got nothing"
    assert 1 < tail[0]["seq"]
    assert tail == whole[-len(tail) :]


def test_a_run_continues_after_its_sender_disconnects(slow_base: str) -> None:
    user = User("acme", "leaver")

    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(slow_base, user) as stays:
            async with open_ws(slow_base, user) as leaves:
                await leaves.send(user_message("m"))
                await recv_json(leaves)  # the run has started
            return await collect(stays, until_completed=["m"])

    events = asyncio.run(scenario())
    assert events[-1]["type"] == "agent_completed"
    assert events[-1]["message_id"] == "m"


def test_gauges_return_to_idle_and_counters_count(base: str) -> None:
    users = [User("acme", f"gauge{i}") for i in range(3)]

    async def scenario() -> dict[str, float]:
        async with aiohttp.ClientSession() as session:
            sessions_before = await metric(session, base, "aep_sessions_total")
            events_before = await metric(session, base, "aep_events_sent_total")
            seen = await converse(base, users, messages=3)
            # one that leaves mid-run, one cut abruptly
            async with open_ws(base, users[0]) as ws:
                await ws.send(user_message("leaving"))
            ws = await open_ws(base, users[1])
            await ws.send(user_message("cut"))
            ws.transport.abort()
            return {
                "connections": await wait_for_metric(session, base, "aep_connections_active", 0),
                "runs": await wait_for_metric(session, base, "aep_runs_active", 0),
                "sessions": await metric(session, base, "aep_sessions_total") - sessions_before,
                "events": await metric(session, base, "aep_events_sent_total") - events_before,
                "received": sum(len(s.events) for s in seen),
            }

    values = asyncio.run(scenario())
    assert values["connections"] == 0
    assert values["runs"] == 0
    assert values["sessions"] >= 5
    assert values["events"] >= values["received"]


# -- the process ---------------------------------------------------------------------------


def test_sigterm_shuts_down_cleanly_with_connections_and_runs_open() -> None:
    service = EmbeddedService(jwt_secret=SECRET, think_ms=(200, 300))
    base = service.start()

    async def scenario() -> None:
        async with open_ws(base, ALICE) as ws:
            await ws.send(user_message("m"))
            await recv_json(ws, wait_s=3)
            started = time.monotonic()
            assert await asyncio.to_thread(service.stop) == 0
            assert time.monotonic() - started < seconds(4)

    asyncio.run(scenario())


def test_the_service_raises_its_open_file_limit(base: str, services: Services) -> None:
    soft, hard = psutil.Process(services.get().pid).rlimit(psutil.RLIMIT_NOFILE)
    assert soft == hard


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--fault", "bogus"], "unknown fault 'bogus'; valid faults: singleton_emitter, "),
        (["--think-ms", "5"], "--think-ms: expected MIN,MAX"),
        (["--think-ms", "9,2"], "--think-ms: expected MIN,MAX"),
        (["--think-ms", "a,b"], "--think-ms: expected MIN,MAX"),
        (["--port", "70000"], "--port: expected 0-65535"),
        (["--leak-kb", "-1"], "--leak-kb: expected"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--fault", "lost_event", "--fault", "out_of_order"], "replace the same part"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--jwt-secret", "s", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("python -m harness.reference: error: ")
    assert fragment in err


def _run_module(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m harness.reference ARGV`` as a process of its own, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "harness.reference", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_run_as_a_module_it_names_itself_python_m_harness_reference() -> None:
    proc = _run_module("--jwt-secret", SECRET, "--think-ms", "5")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "python -m harness.reference: error: argument --think-ms: expected MIN,MAX integers "
        "with 0 <= MIN <= MAX <= 60000 (e.g. 2,10), got '5'"
    ]


def test_a_missing_secret_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "AEP_JWT_SECRET"}
    proc = _run_module("--port", "0", env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "python -m harness.reference: error: no JWT secret: "
        "pass --jwt-secret or set AEP_JWT_SECRET\n"
    )
