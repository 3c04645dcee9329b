"""Literal records for oracle tests: hand-built event histories, no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from harness.aep import parse_frame
from harness.canary import CanaryBook
from harness.recording import Closed, HttpExchange, Received, Sent
from harness.types import ConnectionId, ScenarioId, TenantId, UserId, UserKey

SCENARIO = ScenarioId("scenarios/test_x.py::test_y")
ALICE = UserKey(TenantId("acme"), UserId("alice"))
BOB = UserKey(TenantId("acme"), UserId("bob"))
EVE = UserKey(TenantId("globex"), UserId("alice"))  # same sub, other tenant
_clock = itertools.count(1)


def book() -> CanaryBook:
    b = CanaryBook(b"k" * 32)
    b.register([ALICE, BOB, EVE])
    return b


def event(
    owner: UserKey,
    message_id: str,
    kind: str,
    seq: int,
    *,
    run_id: str = "r1",
    thread_id: str = "main",
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "type": kind,
        "user_id": owner.user,
        "tenant_id": owner.tenant,
        "thread_id": thread_id,
        "message_id": message_id,
        "run_id": run_id,
        "seq": seq,
        "data": data if data is not None else {},
    }


def received(receiver: UserKey, obj: Any, *, conn: str = "c1", raw: str | None = None) -> Received:
    text = raw if raw is not None else orjson.dumps(obj).decode()
    t = float(next(_clock))
    return Received(SCENARIO, receiver, ConnectionId(conn), t, 1.7e9 + t, text, parse_frame(text))


def sent(sender: UserKey, message_id: str, *, conn: str = "c1", mono: float = 0.0) -> Sent:
    return Sent(SCENARIO, sender, ConnectionId(conn), mono, 1.7e9 + mono, message_id, "main")


def closed(user: UserKey, *, conn: str = "c1", mono: float = 100.0) -> Closed:
    return Closed(SCENARIO, user, ConnectionId(conn), mono, 1.7e9 + mono, "client", 1000, "", 0)


def lifecycle(owner: UserKey, message_id: str, content: str) -> list[dict[str, Any]]:
    """The five events of one correct run."""
    return [
        event(owner, message_id, "agent_started", 1),
        event(owner, message_id, "agent_thinking", 2, data={"thought": f"about {content}"}),
        event(owner, message_id, "tool_executing", 3, data={"tool": "echo", "input": content}),
        event(owner, message_id, "tool_completed", 4, data={"tool": "echo", "output": content}),
        event(
            owner,
            message_id,
            "agent_completed",
            5,
            data={"result": content, "history": [message_id]},
        ),
    ]


def exchange(
    user: UserKey, path: str, status: int, body: str, *, purpose: str = "read"
) -> HttpExchange:
    t = float(next(_clock))
    return HttpExchange(SCENARIO, user, "GET", path, status, body, t, t + 0.01, 1.7e9 + t, purpose)
