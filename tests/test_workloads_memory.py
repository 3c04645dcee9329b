"""Users, workloads and oracles together over the in-memory transport: no server, no sockets."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import orjson
import pytest

from harness import workloads
from harness.adapters import AdapterContext
from harness.adapters.aep import aep_via
from harness.gcpolicy import GC_YOUNG_THRESHOLD
from harness.recording import received_frames
from harness.run import Run, Target
from harness.scenario import Scenario, Sizes, Wiring
from harness.transport.base import HttpResponse
from harness.transport.memory import MemoryConnector, ServerSide
from harness.types import UserKey, ViolationKind


class TokenIsTheUser:
    """Credentials for the twin: the token is the user key itself."""

    def fixed_users(self):
        return None

    async def token_for(self, user: UserKey) -> str:
        return str(user)


class NoHttp:
    async def request(self, method, url, *, token=None, json_body=None, timeout_s=10.0):
        return HttpResponse(404, '{"error":"not_found"}')

    async def aclose(self) -> None:
        pass


class TwinService:
    """A tiny AEP/1 service: correct, or with the singleton-emitter bug.

    A bad frame (not a ``user_message`` with a ``thread_id``) gets an error
    frame; with ``echo`` (the bug) its message quotes the last message any user
    sent; with ``mute`` (another bug) it gets nothing.
    """

    def __init__(
        self,
        *,
        singleton: bool = False,
        lose: str | None = None,
        echo: bool = False,
        mute: bool = False,
    ) -> None:
        self.singleton = singleton
        self.lose = lose  # the bug: the terminal event of messages ending in this is never sent
        self.echo = echo
        self.mute = mute
        self.sockets: dict[str, list[ServerSide]] = {}
        self.current: ServerSide | None = None  # the bug: one emitter for everyone
        self.request = ""  # the bug: the request being served, process-wide

    async def handle(self, conn: ServerSide) -> None:
        self.sockets.setdefault(conn.token, []).append(conn)
        runs = []
        while (text := await conn.recv()) is not None:
            msg = orjson.loads(text)
            if msg.get("type") != "user_message" or "thread_id" not in msg:
                await self.refuse(conn)
                continue
            self.current = conn
            self.request = text
            runs.append(asyncio.create_task(self.run(conn, msg)))
        self.sockets[conn.token].remove(conn)
        await asyncio.gather(*runs)

    async def refuse(self, conn: ServerSide) -> None:
        if self.mute:
            return
        message = f"bad frame (context: {self.request})" if self.echo else "bad frame"
        error = {"type": "error", "code": "bad_request", "message": message}
        await conn.send(orjson.dumps(error).decode())

    async def run(self, conn: ServerSide, msg: dict) -> None:
        tenant, user = conn.token.split("/")
        kinds = [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_completed",
        ]
        for seq, kind in enumerate(kinds, 1):
            await asyncio.sleep(0.002)
            if self.lose and kind == kinds[-1] and msg["message_id"].endswith(self.lose):
                return
            event = {
                "type": kind,
                "user_id": user,
                "tenant_id": tenant,
                "thread_id": msg["thread_id"],
                "message_id": msg["message_id"],
                "run_id": msg["message_id"],
                "seq": seq,
                "data": {"thought": msg["content"]},
            }
            targets = [self.current] if self.singleton else list(self.sockets.get(conn.token, []))
            for target in targets:
                if target is not None:
                    await target.send(orjson.dumps(event).decode())


@pytest.fixture
def scenario_on(tmp_path: Path):
    runs: list[Run] = []

    def make(service: TwinService, _tmp: Path) -> Scenario:
        scenario = _scenario_on(service, tmp_path)
        runs.append(scenario.run)
        return scenario

    yield make
    for run in runs:
        run.close()


def _scenario_on(service: TwinService, tmp_path: Path) -> Scenario:
    run = Run(
        target=Target("memory://", "memory://ws"),
        report_dir=tmp_path,
        seed=3,
        run_key=b"r" * 32,
        run_id="20260101T000000Z-abcdef",
        lifecycle_timeout_s=2.0,
    )
    wiring = Wiring(
        context=AdapterContext(base_url="memory://", ws_url="memory://ws"),
        adapter=aep_via(lambda: MemoryConnector(service.handle)),
        http=NoHttp,
        credentials=TokenIsTheUser(),
    )
    return Scenario(run, "test_twin", sizes=Sizes(users=6, tenants=2), wiring=wiring)


def test_a_correct_service_passes_with_overlapping_runs(scenario_on, tmp_path):
    harness = scenario_on(TwinService(), tmp_path)
    harness.conditions("overlapping_runs")
    users = harness.users()
    assert harness.chat(users, messages=3, connections=2) == 18
    harness.verify()
    assert harness.run.counts["events_received"] >= 18 * 5
    assert harness.result.coverage["overlapping_runs"] > 0


def test_a_scenarios_work_runs_with_fewer_collections(scenario_on, tmp_path, monkeypatch):
    seen = []
    make_users = workloads.make_users

    async def make_users_noting_the_threshold(env, keys):
        seen.append(gc.get_threshold()[0])
        return await make_users(env, keys)

    monkeypatch.setattr(workloads, "make_users", make_users_noting_the_threshold)
    before = gc.get_threshold()
    scenario_on(TwinService(), tmp_path).users()
    assert seen == [max(before[0], GC_YOUNG_THRESHOLD)]
    assert gc.get_threshold() == before


def test_a_singleton_emitter_is_caught_as_cross_delivery(scenario_on, tmp_path):
    harness = scenario_on(TwinService(singleton=True), tmp_path)
    users = harness.users()
    harness.chat(users, messages=3, connections=1)
    kinds = {f.kind for f in harness.run.findings}
    assert ViolationKind.CROSS_DELIVERY in kinds
    with pytest.raises(AssertionError, match="cross_delivery"):
        harness.verify()


def test_every_frame_is_in_events_jsonl(scenario_on, tmp_path):
    harness = scenario_on(TwinService(), tmp_path)
    harness.chat(harness.users(2, tenants=1), messages=1, connections=1)
    harness.run.close()
    lines = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    received = [raw for line in lines if line["k"] == "recv" for raw in received_frames(line)]
    assert len(received) == harness.run.counts["events_received"]
    assert {line["k"] for line in lines} >= {"open", "sent", "recv", "close"}


def test_a_scenario_that_creates_no_declared_condition_is_inconclusive(scenario_on, tmp_path):
    from harness.scenario import Inconclusive

    harness = scenario_on(TwinService(), tmp_path)
    harness.conditions("reconnects")
    harness.chat(harness.users(2, tenants=1), messages=1, connections=1)
    with pytest.raises(Inconclusive, match="created no reconnects"):
        harness.verify()


def test_a_closed_loop_sends_each_message_after_the_last_run_completed(scenario_on, tmp_path):
    harness = scenario_on(TwinService(), tmp_path)
    users = harness.users()
    assert harness.closed_loop(users, messages=4) == 24
    harness.verify()
    assert harness.run.runs_completed == 24
    assert harness.run.counts["connections"] == 6
    harness.run.close()
    lines = [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    by_conn: dict[str, list[str]] = {}
    for line in lines:
        if line["k"] == "sent" or (
            line["k"] == "recv" and any('"agent_completed"' in raw for raw in received_frames(line))
        ):
            by_conn.setdefault(line["conn"], []).append(line["k"])
    # One message in flight per connection: sent, completed, sent, completed …
    assert all(kinds == ["sent", "recv"] * 4 for kinds in by_conn.values()), by_conn


def test_a_closed_loop_catches_a_singleton_emitter(scenario_on, tmp_path):
    harness = scenario_on(TwinService(singleton=True), tmp_path)
    harness.closed_loop(harness.users(), messages=3)
    assert ViolationKind.CROSS_DELIVERY in {f.kind for f in harness.run.findings}


def test_a_closed_loop_judges_a_lost_terminal_event_once_its_user_stalls(scenario_on, tmp_path):
    harness = scenario_on(TwinService(lose="-m2"), tmp_path)  # every user's second message
    began = time.monotonic()
    assert harness.closed_loop(harness.users(), messages=3) == 12  # each stopped after it
    assert time.monotonic() - began < 2 * 2.0  # one lifecycle timeout, not two
    assert ViolationKind.LOST_EVENT in {f.kind for f in harness.run.findings}
    with pytest.raises(AssertionError, match="lost_event"):
        harness.verify()


# -- bad frames and shared message ids ------------------------------------------------------


def test_the_error_reply_to_a_deliberate_bad_frame_is_expected_not_a_fault(scenario_on, tmp_path):
    harness = scenario_on(TwinService(), tmp_path)
    harness.conditions("overlapping_runs", "bad_frames_interleaved")
    users = harness.users()
    assert harness.chat(users, messages=2, connections=1, bad_frames=True) == 12
    harness.verify()
    run = harness.run
    assert run.counts["bad_frames_rejected"] == run.counts["bad_frames_sent"] == 6
    assert run.errors == {}
    # What was sent is on record, next to the error frames that answered it.
    run.log.flush()
    lines = [orjson.loads(line) for line in run.log.path.read_bytes().splitlines()]
    sent = [line for line in lines if line["k"] == "sent_frame"]
    assert len(sent) == 6
    canaries = {str(user.key): user.canary for user in users}
    assert all(canaries[line["user"]] in line["raw"] for line in sent)
    assert run.runs_completed == 12
    assert harness.result.coverage["bad_frames_interleaved"] > 0


def test_a_bad_frame_left_unanswered_is_a_target_fault_not_a_violation(scenario_on, tmp_path):
    harness = scenario_on(TwinService(mute=True), tmp_path)
    harness.chat(harness.users(), messages=2, connections=1, bad_frames=True)
    harness.verify()
    [entry] = harness.run.errors.values()
    assert (entry["kind"], entry["count"]) == ("bad_frame_unanswered", 6)


def test_an_error_that_quotes_another_users_request_is_cross_delivery(scenario_on, tmp_path):
    harness = scenario_on(TwinService(echo=True), tmp_path)
    harness.chat(harness.users(), messages=2, connections=1, bad_frames=True)
    leaks = [f for f in harness.run.findings if f.kind == ViolationKind.CROSS_DELIVERY]
    assert leaks
    assert all('"type":"error"' in f.evidence["raw"] for f in leaks)
    with pytest.raises(AssertionError, match="cross_delivery"):
        harness.verify()


def test_without_bad_frames_an_echoing_service_goes_unseen(scenario_on, tmp_path):
    # What the bad frames are for: the error path is the only way to this bug.
    harness = scenario_on(TwinService(echo=True), tmp_path)
    harness.chat(harness.users(), messages=2, connections=1)
    harness.verify()


def test_users_sharing_message_ids_on_a_correct_service_pass(scenario_on, tmp_path):
    harness = scenario_on(TwinService(), tmp_path)
    harness.conditions("shared_message_ids", "overlapping_runs")
    users = harness.users()
    assert harness.chat(users, messages=3, connections=2, message_ids="shared") == 18
    harness.verify()
    assert harness.run.runs_completed == 18
    assert harness.result.coverage["shared_message_ids"] == 3  # shared-m1, -m2, -m3
    assert harness.run.errors == {}
