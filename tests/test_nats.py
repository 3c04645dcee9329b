"""The NATS adapter against a real nats-server (the Debian package; ``.ci/run`` installs it).

Each test generates a server configuration — an account per tenant, a user per
simulated user with a password and permissions, the WebSocket listener and the
monitoring port on free loopback ports — and the harness's tokens file from the
same list. A correctly isolated configuration passes; two realistic
misconfigurations are caught as ``cross_delivery`` with the right
``crosses_tenant``: one account's wildcard stream exported and imported by
another account, and one user allowed to subscribe to ``>`` in its account. A
publish outside the user's own subjects that the server lets through reaches its
victim with the culprit's canary, and is reported as a ``cross_delivery`` of its
own, even when the victim was not there to receive it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from e2e_helpers import SEED, closed_port, output_of, read_summary, run_harness
from nats_helpers import (
    NatsConfig,
    NatsUser,
    RunningNats,
    isolated_users,
    nats_server,
    require_nats_server,
)

from harness import workloads
from harness.adapters import AdapterContext, JsonMemoryProbe
from harness.adapters.nats import NATS_CODEC, create, parse_options, subject_token
from harness.aep import ErrorFrame, Event, Malformed
from harness.errors import AuthRefused, ConfigError, TargetUnreachable
from harness.run import Run, Target
from harness.transport.base import ChannelClosed, OutsideAttempt
from harness.transport.nats import open_nats_channel
from harness.types import ScenarioId, TenantId, UserId, UserKey, ViolationKind
from harness.users import Identity, SimUser

TENANTS = ("acme", "globex")
#: The scenarios that apply to a broker (no HTTP state API), kept small.
SCENARIOS = ("-k", "same_subjects or concurrent_users or every_connection", "-q")


# -- the codec and the options, no server ---------------------------------------------------------


def test_a_users_own_message_decodes_to_the_one_event_of_its_run():
    sent = NATS_CODEC.encode_message(message_id="c1-m1", thread_id="main", content="hello c1")
    raw = orjson.dumps({"subject": "u0.main", "sub": "u0.>", "data": sent}).decode()
    assert NATS_CODEC.decode(raw) == Event(
        type="message",
        user_id=None,
        tenant_id=None,
        thread_id="main",
        message_id="c1-m1",
        run_id="c1-m1",
        seq=None,
        data={"subject": "u0.main", "subscription": "u0.>"},
    )
    assert NATS_CODEC.lifecycle.events == ("message",)
    assert NATS_CODEC.owner_tags is False


def test_a_refused_publish_is_an_error_frame_and_a_foreign_payload_is_malformed():
    assert NATS_CODEC.decode('{"error": "permissions violation for publish to \\"u1.x\\""}') == (
        ErrorFrame("nats_error", 'permissions violation for publish to "u1.x"')
    )
    frame = NATS_CODEC.decode('{"subject": "u0.x", "sub": ">", "data": "plain text"}')
    assert isinstance(frame, Malformed)
    assert frame.reason == "a message on 'u0.x' without message_id and thread_id"


def test_options_have_defaults_and_every_mistake_is_one_config_error():
    options = parse_options({}, "isoharness.toml [adapter]")
    assert (options.username, options.subject) == ("{tenant}.{user}", "{user}.{thread}")
    assert options.subscribe == (">", "{user}.>")
    assert options.monitor_url is None
    cases = {
        "subscribe_to": "invalid adapter option 'subscribe_to' from isoharness.toml [adapter]: "
        "unknown key; did you mean 'subscribe'?",
        "subject": "invalid subject '{user}.{channel}' from isoharness.toml [adapter]: "
        "unknown placeholder {channel}; use {tenant}, {thread}, {user}",
        "monitor_url": "invalid monitor_url '127.0.0.1:8222' from isoharness.toml [adapter]: "
        "the http(s) URL of the NATS monitoring port",
        "subscribe": "invalid subscribe '{user}.>' from isoharness.toml [adapter]: "
        "a list of subject templates",
    }
    values = {
        "subscribe_to": [">"],
        "subject": "{user}.{channel}",
        "monitor_url": "127.0.0.1:8222",
        "subscribe": "{user}.>",
    }
    for key, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_options({key: values[key]}, "isoharness.toml [adapter]")
        assert str(caught.value) == message


def test_the_memory_probe_is_varz_mem_and_ids_become_subject_tokens():
    context = AdapterContext(
        base_url="http://127.0.0.1:8080",
        ws_url="ws://127.0.0.1:8080/ws",
        options={"monitor_url": "http://127.0.0.1:8222/"},
    )
    adapter = create(context)
    assert adapter.url == "ws://127.0.0.1:8080"
    assert adapter.memory_probe() == JsonMemoryProbe(
        "http://127.0.0.1:8222/varz", "mem", gauges=(("nats_connections", "connections"),)
    )
    assert adapter.capabilities == frozenset()
    assert subject_token("a.b c>*") == "a_b_c__"


# -- the channel against a real server ------------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[tuple[NatsConfig, RunningNats]]:
    config = NatsConfig(isolated_users(TENANTS, 2))
    with nats_server(config, tmp_path) as server:
        yield config, server


def acme_u1_allowed(users: int, **permissions: list[str]) -> list[NatsUser]:
    """:func:`isolated_users` with acme/u1's ``publish`` or ``subscribe`` widened."""
    return [
        replace(u, **permissions) if (u.tenant, u.user) == ("acme", "u1") else u
        for u in isolated_users(TENANTS, users)
    ]


def sim_user(nats_user: NatsUser, *, password: str | None = None) -> SimUser:
    key = UserKey(TenantId(nats_user.tenant), UserId(nats_user.user))
    identity = Identity(key=key, name="N", email="n@example.com", locale="en_US")
    canary = f"cnry{nats_user.tenant}{nats_user.user}"
    token = nats_user.password if password is None else password
    return SimUser(identity, token=token, canary=canary, rng=random.Random(1))


def test_a_channel_subscribes_as_widely_as_allowed_and_gets_its_own_messages(isolated):
    config, server = isolated
    acme_u0, globex_u0, acme_u1 = config.users[0], config.users[1], config.users[2]

    async def main() -> None:
        adapter = create(AdapterContext(base_url=server.ws_url.replace("ws", "http"), ws_url=""))
        first = await adapter.open(sim_user(acme_u1))
        channel = await adapter.open(sim_user(acme_u0))
        other_tenant = await adapter.open(sim_user(globex_u0))
        # ">" refused, "u0.>" kept; publishing into acme/u1's subjects tried and refused.
        assert channel.subscription == "u0.>"
        refusal = 'nats: permissions violation for publish to "u1.outside"'
        assert channel.outside_attempts == [
            OutsideAttempt("u1.outside", UserKey(TenantId("acme"), UserId("u1")), False, refusal)
        ]
        # The first user of each tenant has no one else's subject to try.
        assert first.outside_attempts == other_tenant.outside_attempts == []
        text = NATS_CODEC.encode_message(message_id="m1", thread_id="main", content="hi")
        await channel.send(text)
        raw, binary = await asyncio.wait_for(channel.recv(), 5)
        assert not binary
        assert orjson.loads(raw) == {"subject": "u0.main", "sub": "u0.>", "data": text}
        await asyncio.sleep(0.2)  # nothing reached the same user id in the other account
        for other in (first, other_tenant):
            await other.close()
        await channel.close()
        with pytest.raises(ChannelClosed):  # its first frame is the end: it received nothing
            await asyncio.wait_for(other_tenant.recv(), 1)

    asyncio.run(main())


def test_a_publish_outside_the_users_subjects_that_the_server_allows_reaches_the_victim(
    tmp_path,
):
    users = acme_u1_allowed(2, publish=[">"])
    acme_u0, acme_u1 = users[0], users[2]

    async def main(server: RunningNats) -> None:
        adapter = create(AdapterContext(base_url=server.ws_url.replace("ws", "http"), ws_url=""))
        victim = await adapter.open(sim_user(acme_u0))
        culprit = await adapter.open(sim_user(acme_u1))
        assert victim.outside_attempts == []
        assert culprit.outside_attempts == [
            OutsideAttempt("u0.outside", UserKey(TenantId("acme"), UserId("u0")), True, "")
        ]
        raw, _ = await asyncio.wait_for(victim.recv(), 5)
        frame = NATS_CODEC.decode(raw)
        assert isinstance(frame, Event)
        assert frame.message_id == "cnryacmeu1-outside"  # the culprit's canary
        assert frame.data["subject"] == "u0.outside"
        for channel in (victim, culprit):
            await channel.close()

    with nats_server(NatsConfig(users), tmp_path) as server:
        asyncio.run(main(server))


def test_an_accepted_outside_publish_is_reported_though_its_victim_had_left(tmp_path):
    # acme/u1 may publish anywhere in its account. acme/u0 is gone when acme/u1
    # connects, so nobody receives the publish: only the server's answer shows the hole.
    users = acme_u1_allowed(2, publish=[">"])
    victim, culprit = sim_user(users[0]), sim_user(users[2])
    run = Run(
        target=Target("http://127.0.0.1", "ws://127.0.0.1", adapter="nats"),
        report_dir=tmp_path / "report",
        seed=SEED,
        run_key=b"nats-outside-publish-run-key-32b",
        run_id="20260101T000000Z-0a75de",
        lifecycle_timeout_s=5.0,
        codec=NATS_CODEC,
    )

    async def main(server: RunningNats) -> None:
        base_url = server.ws_url.replace("ws", "http")
        env = workloads.Env(
            run=run,
            scenario=ScenarioId("test_nats::outside"),
            adapter=create(AdapterContext(base_url=base_url, ws_url="")),
            http=None,  # type: ignore[arg-type]
            credentials=None,  # type: ignore[arg-type]
            base_url=base_url,
            ws_url=server.ws_url,
        )
        first = await workloads.connect(env, victim)
        assert first is not None
        await first.close()
        second = await workloads.connect(env, culprit)
        assert second is not None
        await asyncio.sleep(0.2)
        await second.close()

    with nats_server(NatsConfig(users), tmp_path) as server:
        asyncio.run(main(server))
    run.close()
    assert run.counts["events_received"] == 0
    assert run.counts["outside_writes"] == 1
    [finding] = run.findings
    assert (finding.kind, finding.victim, finding.owner) == (
        ViolationKind.CROSS_DELIVERY,
        victim.key,
        culprit.key,
    )
    assert finding.detail.startswith(
        "the target accepted acme/u1's publish to 'u0.outside', a subject of acme/u0"
    )
    assert finding.evidence["signal"] == "publish accepted"
    lines = [orjson.loads(line) for line in (tmp_path / "report/events.jsonl").read_bytes().split()]
    [write] = [line for line in lines if line["k"] == "write"]
    assert (write["user"], write["owner"], write["target"], write["accepted"]) == (
        "acme/u1",
        "acme/u0",
        "u0.outside",
        True,
    )


def test_a_wrong_password_is_auth_refused_and_a_closed_port_unreachable(isolated):
    config, server = isolated
    user = config.users[0]

    async def main() -> None:
        with pytest.raises(AuthRefused) as refused:
            await open_nats_channel(
                server.ws_url, user=user.name, password="wrong", subscribe=["u0.>"], route=str
            )
        assert str(refused.value) == (
            f"target {server.ws_url} is unusable: "
            "NATS refused user 'acme.u0': nats: 'Authorization Violation'"
        )
        port = closed_port()
        with pytest.raises(TargetUnreachable) as unreachable:
            await open_nats_channel(
                f"ws://127.0.0.1:{port}", user=user.name, password="x", subscribe=[], route=str
            )
        assert str(unreachable.value).startswith(
            f"target ws://127.0.0.1:{port} is unusable: no NATS connection could be made: "
        )

    asyncio.run(main())


# -- the harness's CLI against a real server ------------------------------------------------------


def events_of(report: Path) -> list[dict[str, object]]:
    """Every line of every ``events.jsonl`` under ``report``."""
    return [
        orjson.loads(line)
        for path in report.rglob("events.jsonl")
        for line in path.read_bytes().splitlines()
    ]


def harness_against(
    config: NatsConfig,
    folder: Path,
    *,
    tokens: NatsConfig | None = None,
    scenarios: tuple[str, ...] = SCENARIOS,
) -> tuple[int, str, dict[str, object], Path]:
    """Start nats-server with ``config``; run ``python -m harness run`` against it."""
    require_nats_server()
    (tokens or config).tokens_file(folder / "tokens.txt")
    with nats_server(config, folder) as server:
        (folder / "isoharness.toml").write_text(
            f'target_url = "{server.ws_url}"\n'
            'credentials = "static"\ntokens_file = "tokens.txt"\n'
            f"users = 4\ntenants = 2\nseed = {SEED}\nlifecycle_timeout = 5\n\n"
            f'[adapter]\nname = "nats"\nmonitor_url = "{server.monitor_url}"\n'
        )
        report = folder / "report"
        proc = run_harness("run", "--report-dir", str(report), "--", *scenarios, cwd=folder)
    return proc.returncode, output_of(proc), read_summary(report), report


def test_a_correctly_isolated_server_passes_with_memory_and_connections_sampled(tmp_path):
    # Every shipped scenario: those needing AEP/1's state API skip, the rest must pass.
    config = NatsConfig(isolated_users(TENANTS, 4))
    code, output, summary, report = harness_against(config, tmp_path, scenarios=("-q",))
    assert (code, summary["verdict"]) == (0, "pass"), output
    assert summary["errors"] == [], output
    for path in report.rglob("*"):  # the passwords went into CONNECTs, never into the report
        if path.is_file():
            data = path.read_bytes()
            assert not [u.name for u in config.users if u.password.encode() in data], path
    samples = [orjson.loads(line) for line in (report / "timeline.jsonl").read_bytes().splitlines()]
    memory = [s["values"]["memory_bytes"] for s in samples if "memory_bytes" in s["values"]]
    assert memory, "no memory sample from /varz in timeline.jsonl"
    assert all(value > 1_000_000 for value in memory)
    # /varz connections: sampled, up while users were connected, back to idle at the end.
    connections = [s["values"]["nats_connections"] for s in samples]
    assert connections[0] == connections[-1] == 0
    assert max(connections) > 0
    # Users that connected together still tried each other's subjects, and were refused.
    assert summary["counts"]["outside_writes"] > 0
    writes = [line for line in events_of(report) if line["k"] == "write"]
    assert len(writes) == summary["counts"]["outside_writes"]
    assert all(not w["accepted"] and "permissions violation" in w["answer"] for w in writes)


def test_a_wildcard_stream_exported_to_another_account_is_caught_across_tenants(tmp_path):
    # acme exports everything; globex imports it: globex/u0's "u0.>" now gets acme/u0's messages.
    config = NatsConfig(
        isolated_users(TENANTS, 4),
        exports={"acme": [">"]},
        imports={"globex": [("acme", ">")]},
    )
    code, output, summary, _ = harness_against(config, tmp_path)
    assert (code, summary["verdict"]) == (1, "fail"), output
    violations = summary["violations"]
    assert violations
    assert {v["kind"] for v in violations} == {"cross_delivery"}
    assert all(v["crosses_tenant"] is True for v in violations)
    assert {(v["victim"], v["owner"]) for v in violations} <= {
        (f"globex/u{n}", f"acme/u{n}") for n in range(4)
    }
    assert ("globex/u0", "acme/u0") in {(v["victim"], v["owner"]) for v in violations}


def test_a_user_allowed_to_subscribe_to_everything_in_its_account_is_caught(tmp_path):
    users = acme_u1_allowed(4, subscribe=[">"])
    code, output, summary, _ = harness_against(NatsConfig(users), tmp_path)
    assert (code, summary["verdict"]) == (1, "fail"), output
    violations = summary["violations"]
    assert violations
    assert {v["kind"] for v in violations} == {"cross_delivery"}
    assert all(v["crosses_tenant"] is False for v in violations)
    assert {(v["victim"], v["owner"]) for v in violations} == {("acme/u1", "acme/u0")}
    assert "acme/u1 received another user's frame (owner acme/u0" in violations[0]["detail"]


def test_a_user_allowed_to_publish_into_another_users_subjects_is_caught(tmp_path):
    users = acme_u1_allowed(4, publish=[">"])
    code, output, summary, _ = harness_against(NatsConfig(users), tmp_path)
    assert (code, summary["verdict"]) == (1, "fail"), output
    violations = summary["violations"]
    assert {v["kind"] for v in violations} == {"cross_delivery"}
    # The victim may also receive the publish (found by canary); the accepted write
    # itself is reported in every scenario step that opened acme/u1.
    assert {(v["victim"], v["owner"]) for v in violations} == {("acme/u0", "acme/u1")}
    accepted = [v for v in violations if v["evidence"]["signal"] == "publish accepted"]
    assert accepted, output
    assert all(v["evidence"]["target"] == "u0.outside" for v in accepted)


def test_a_wrong_password_is_a_one_line_error_and_exit_code_3(tmp_path):
    users = isolated_users(TENANTS, 4)
    wrong = [replace(users[0], password="not-the-password"), *users[1:]]
    code, output, summary, _ = harness_against(
        NatsConfig(users), tmp_path, tokens=NatsConfig(wrong)
    )
    assert (code, summary["verdict"]) == (3, "error"), output
    assert "NATS refused user 'acme.u0': nats: 'Authorization Violation'" in output
    assert "Traceback" not in output
