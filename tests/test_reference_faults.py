"""Each fault mode of the reference service shows to a client doing the right thing.

Every test runs the same traffic twice, parametrised by ``faulty``: against
the service started with the fault, where the bug must show, and against a
correct service, where it must not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from reference_helpers import (
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
)

faulty = pytest.mark.parametrize("faulty", [True, False], ids=["fault", "clean"])


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    with running_services() as started:
        yield started


def _base(services: Services, fault: str, faulty: bool, **options: Any) -> str:
    return services.get(*([fault] if faulty else []), **options).url


@faulty
def test_singleton_emitter_delivers_to_a_concurrent_user(services: Services, faulty: bool) -> None:
    base = _base(services, "singleton_emitter", faulty)
    users = [User("t1", "emit-a"), User("t2", "emit-b")]
    seen = asyncio.run(converse(base, users, messages=5, deadline=1.5))
    assert any(foreign_events(one) for one in seen) == faulty


@faulty
def test_state_key_missing_user_shares_values_between_users(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "state_key_missing_user", faulty)
    first, second = User("t1", "state-a"), User("t2", "state-b")

    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/profile"
            await http(session, "PUT", url, first, json={"value": "first's"})
            await http(session, "PUT", url, second, json={"value": "second's"})
            return await http(session, "GET", url, first)

    status, body = asyncio.run(scenario())
    assert status == 200
    assert (body["value"] == "second's") == faulty


@faulty
def test_thread_key_missing_user_mixes_threads(services: Services, faulty: bool) -> None:
    base = _base(services, "thread_key_missing_user", faulty)
    first, second, third = User("t1", "thr-a"), User("t2", "thr-b"), User("t3", "thr-c")

    async def scenario() -> tuple[list[str], tuple[int, Any]]:
        async with open_ws(base, first) as ws:
            await ws.send(user_message("first-1", "first's secret", "main"))
            await collect(ws, until_completed=["first-1"])
        async with open_ws(base, second) as ws:
            await ws.send(user_message("second-1", "hello", "main"))
            events = await collect(ws, until_completed=["second-1"])
        async with aiohttp.ClientSession() as session:
            read = await http(session, "GET", base + "/api/threads/main", third)
        return events[-1]["data"]["history"], read

    history, (status, _) = asyncio.run(scenario())
    assert (history == ["first-1", "second-1"]) == faulty
    assert (status == 200) == faulty


@faulty
def test_path_cache_serves_one_users_read_to_another(services: Services, faulty: bool) -> None:
    base = _base(services, "path_cache", faulty)
    first, second = User("t1", "cache-a"), User("t2", "cache-b")

    async def scenario() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/settings"
            await http(session, "PUT", url, first, json={"value": "first's"})
            await http(session, "PUT", url, second, json={"value": "second's"})
            reads = await asyncio.gather(
                http(session, "GET", url, first), http(session, "GET", url, second)
            )
            return [body["value"] for _, body in reads]

    values = asyncio.run(scenario())
    assert (values != ["first's", "second's"]) == faulty


@faulty
def test_reconnect_registry_hands_a_new_connection_anothers_events(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "reconnect_registry", faulty, think_ms=(40, 50))
    leaver, newcomer = User("t1", "slot-a"), User("t2", "slot-b")

    async def scenario() -> Seen:
        async with open_ws(base, leaver) as ws:
            await ws.send(user_message("leaver-1"))
            await recv_json(ws)  # the run is under way
        await asyncio.sleep(0.02)
        async with open_ws(base, newcomer) as ws:
            return Seen(newcomer, frames=await collect(ws, deadline=0.6))

    assert bool(foreign_events(asyncio.run(scenario()))) == faulty


@faulty
def test_dirty_pipe_gives_the_next_reader_a_cancelled_response(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "dirty_pipe", faulty)
    first, second = User("t1", "pipe-a"), User("t2", "pipe-b")

    async def read_and_hang_up(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            try:
                async with asyncio.timeout(0.005):
                    await http(session, "GET", url, first)
            except TimeoutError:
                pass  # hung up mid-request, as an impatient client does

    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            await http(session, "PUT", base + "/api/state/token", first, json={"value": "secret"})
            await read_and_hang_up(base + "/api/state/token")
            await asyncio.sleep(0.1)
            return await http(session, "GET", base + "/api/state/never-set", second)

    status, body = asyncio.run(scenario())
    if faulty:
        assert (status, body["value"]) == (200, "secret")
    else:
        assert (status, body) == (404, {"error": "not_found"})


@faulty
def test_tenant_broadcast_reaches_other_users_of_the_tenant(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "tenant_broadcast", faulty)
    sender, colleague, outsider = User("t1", "tb-a"), User("t1", "tb-b"), User("t2", "tb-c")

    async def scenario() -> tuple[Seen, Seen, Seen]:
        async with open_ws(base, colleague) as near, open_ws(base, outsider) as far:
            [mine] = await converse(base, [sender], messages=2)
            return (
                mine,
                Seen(colleague, frames=await collect(near, deadline=0.3)),
                Seen(outsider, frames=await collect(far, deadline=0.1)),
            )

    mine, near, far = asyncio.run(scenario())
    assert incomplete_runs(mine) == []
    assert bool(foreign_events(near)) == faulty
    assert foreign_events(far) == []


@faulty
def test_lost_event_drops_events_of_overlapping_runs(services: Services, faulty: bool) -> None:
    base = _base(services, "lost_event", faulty)
    [seen] = asyncio.run(converse(base, [User("t1", "lost")], messages=10, deadline=1.5))
    assert bool(incomplete_runs(seen)) == faulty
    assert duplicate_events(seen) == []


def test_lost_event_keeps_a_lone_run_whole(services: Services) -> None:
    base = _base(services, "lost_event", True)
    user = User("t1", "lone")

    async def scenario() -> list[Seen]:
        seen = []
        async with open_ws(base, user) as ws:
            for n in range(5):
                await ws.send(user_message(f"m{n}"))
                frames = await collect(ws, until_completed=[f"m{n}"], deadline=1)
                seen.append(Seen(user, sent=[f"m{n}"], frames=frames))
        return seen

    assert [incomplete_runs(one) for one in asyncio.run(scenario())] == [[]] * 5


@faulty
def test_duplicate_event_sends_an_event_twice(services: Services, faulty: bool) -> None:
    base = _base(services, "duplicate_event", faulty)
    [seen] = asyncio.run(converse(base, [User("t1", "dup")], messages=5))
    assert bool(duplicate_events(seen)) == faulty


@faulty
def test_out_of_order_reorders_events_of_a_run(services: Services, faulty: bool) -> None:
    base = _base(services, "out_of_order", faulty)
    [seen] = asyncio.run(converse(base, [User("t1", "order")], messages=8))
    assert bool(misordered_runs(seen)) == faulty
    assert duplicate_events(seen) == []


@faulty
def test_session_leak_keeps_memory_per_closed_session(services: Services, faulty: bool) -> None:
    base = _base(services, "session_leak", faulty, extra_args=["--leak-kb", "1024"])
    sessions = 40

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            before = await metric(session, base, "process_resident_memory_bytes")
            for batch in range(sessions // 10):
                conns = [await open_ws(base, User("t1", f"leak{batch}.{i}")) for i in range(10)]
                await asyncio.gather(*(c.close() for c in conns))
            await wait_for_metric(session, base, "aep_connections_active", 0)
            after = await metric(session, base, "process_resident_memory_bytes")
            return (after - before) / 2**20

    grown_mib = asyncio.run(scenario())
    if faulty:
        assert grown_mib > 0.75 * sessions
    else:
        assert grown_mib < 8


@faulty
def test_gauge_stuck_after_a_client_leaves_mid_run(services: Services, faulty: bool) -> None:
    base = _base(services, "gauge_stuck", faulty)

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                async with open_ws(base, User("t1", f"gauge{n}")) as ws:
                    await ws.send(user_message("m"))
            await wait_for_metric(session, base, "aep_runs_active", 0)
            return await wait_for_metric(session, base, "aep_connections_active", 0, wait_s=1)

    assert (asyncio.run(scenario()) > 0) == faulty


@faulty
def test_error_echo_quotes_another_users_message_in_an_error(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "error_echo", faulty)
    sender, clumsy = User("t1", "echo-a"), User("t2", "echo-b")

    async def scenario() -> dict[str, Any]:
        async with open_ws(base, sender) as ws:
            await ws.send(user_message("sender-1", "sender's secret"))
            await collect(ws, until_completed=["sender-1"])
        async with open_ws(base, clumsy) as ws:
            await ws.send('{"type": "user_message", "message_id": "oops", "content": "x"}')
            return await recv_json(ws)

    error = asyncio.run(scenario())
    assert (error["type"], error["code"]) == ("error", "bad_request")
    assert ("sender's secret" in error["message"]) == faulty


@faulty
def test_preview_leak_shows_the_start_of_another_users_message_upper_cased(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "preview_leak", faulty)
    first, second = User("t1", "tick-a"), User("t2", "tick-b")

    async def scenario() -> list[dict[str, Any]]:
        async with open_ws(base, first) as a, open_ws(base, second) as b:
            await a.send(user_message("a-1", "first's secret note"))
            await b.send(user_message("b-1", "second's note"))
            await collect(b, until_completed=["b-1"])
            return await collect(a, until_completed=["a-1"])

    thoughts = [
        e["data"]["thought"] for e in asyncio.run(scenario()) if e["type"] == "agent_thinking"
    ]
    assert any("SECOND'S NOTE" in thought for thought in thoughts) == faulty


@faulty
def test_message_id_cache_replays_another_users_run_of_the_same_id(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "message_id_cache", faulty)
    first, second = User("t1", "idem-a"), User("t2", "idem-b")

    async def scenario() -> Seen:
        async with open_ws(base, first) as ws:
            await ws.send(user_message("same-1", "first's secret"))
            await collect(ws, until_completed=["same-1"])
        async with open_ws(base, second) as ws:
            await ws.send(user_message("same-1", "second's note"))
            return Seen(second, sent=["same-1"], frames=await collect(ws, deadline=0.5))

    seen = asyncio.run(scenario())
    assert bool(foreign_events(seen)) == faulty
    assert any("first's secret" in str(e["data"]) for e in seen.events) == faulty
    assert incomplete_runs(seen) == []  # the run arrived whole either way


@faulty
def test_undo_buffer_reads_back_another_users_deleted_value(
    services: Services, faulty: bool
) -> None:
    base = _base(services, "undo_buffer", faulty)
    first, second = User("t1", "undo-a"), User("t2", "undo-b")

    async def scenario() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            url = base + "/api/state/draft"
            await http(session, "PUT", url, first, json={"value": "first's"})
            await http(session, "PUT", url, second, json={"value": "second's"})
            await http(session, "DELETE", url, first)
            await http(session, "DELETE", url, second)
            return await http(session, "GET", url, first)

    status, body = asyncio.run(scenario())
    if faulty:
        assert (status, body["value"]) == (200, "second's")
    else:
        assert (status, body) == (404, {"error": "not_found"})


def test_noisy_is_correct_but_finishes_runs_out_of_order(services: Services) -> None:
    base = services.get("noisy").url
    users = [User(f"t{i % 2}", f"noisy{i}") for i in range(4)]

    async def scenario() -> tuple[list[Seen], float, float]:
        seen = await converse(base, users, messages=8, deadline=seconds(5))
        async with aiohttp.ClientSession() as session:
            connections = await wait_for_metric(session, base, "aep_connections_active", 0)
            runs = await wait_for_metric(session, base, "aep_runs_active", 0)
        return seen, connections, runs

    seen, connections, runs = asyncio.run(scenario())
    reordered = 0
    for one in seen:
        assert foreign_events(one) == []
        assert duplicate_events(one) == []
        assert incomplete_runs(one) == []
        assert misordered_runs(one) == []
        finished = [e["message_id"] for e in one.events if e["type"] == "agent_completed"]
        reordered += finished != one.sent
    assert reordered > 0
    assert (connections, runs) == (0, 0)
