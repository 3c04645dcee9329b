"""Adapters: the harness tests a protocol through what its adapter provides, and no more.

A protocol without owner tags or sequence numbers is still tested: canaries
alone name the owner of a leaked event, and runs are judged by event type. A
scenario step the protocol cannot do is a skip naming the missing capability.
The ``adapter`` setting is checked like every other: one line naming the key,
the value and its source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from e2e_helpers import SECRET, closed_port, reference_service

from harness.adapters import AdapterContext, JsonMemoryProbe
from harness.adapters.aep import AepAdapter, create
from harness.adapters.registry import build_adapter, load_factory
from harness.aep import AEP_CODEC, AEP_LIFECYCLE, Event, Frame, parse_frame, user_message
from harness.codec import Lifecycle
from harness.credentials import JwtCredentials
from harness.errors import AuthRefused, ConfigError, IsolationViolation, TargetUnreachable
from harness.oracles.lifecycle import LifecycleOracle
from harness.preflight import preflight
from harness.recording import Received, Sent
from harness.run import Run, Target
from harness.scenario import NotApplicable, Scenario, Sizes, Wiring
from harness.settings import resolve_settings
from harness.transport.base import Channel
from harness.transport.http import AiohttpClient
from harness.transport.websocket import WebSocketConnector
from harness.types import ConnectionId, ScenarioId, TenantId, UserId, UserKey, ViolationKind
from harness.users import SimUser, make_identity

# -- a protocol with no owner tags and no sequence numbers -------------------------------------


@dataclasses.dataclass(frozen=True)
class TaglessCodec:
    """AEP/1 frames with ``user_id``, ``tenant_id`` and ``seq`` thrown away on decoding."""

    name: str = "tagless"
    lifecycle: Lifecycle = AEP_LIFECYCLE
    owner_tags: bool = False

    def encode_message(self, *, message_id: str, thread_id: str, content: str) -> str:
        return user_message(message_id=message_id, thread_id=thread_id, content=content)

    def decode(self, raw: str, *, binary: bool = False) -> Frame:
        frame = parse_frame(raw, binary=binary)
        if isinstance(frame, Event):
            return msgspec.structs.replace(frame, user_id=None, tenant_id=None, seq=None)
        return frame


TAGLESS = TaglessCodec()
ALICE = UserKey(TenantId("acme"), UserId("alice"))


class TaglessAdapter:
    """The tagless protocol over a WebSocket; no state API, no ping."""

    name = "tagless"
    codec = TAGLESS
    capabilities: frozenset[str] = frozenset()

    def __init__(self, context: AdapterContext) -> None:
        self._ws_url = context.ws_url

    async def open(self, user: SimUser) -> Channel:
        return await WebSocketConnector(open_timeout_s=5.0).connect(self._ws_url, token=user.token)

    def memory_probe(self) -> JsonMemoryProbe | None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def clean_service() -> Iterator[str]:
    with reference_service() as url:
        yield url


@pytest.fixture(scope="module")
def singleton_service() -> Iterator[str]:
    """A reference service whose one emitter sends events to whichever user asked last."""
    with reference_service("singleton_emitter") as url:
        yield url


@pytest.fixture
def tagless_scenario(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []

    def make(url: str) -> Scenario:
        ws_url = url.replace("http", "ws", 1) + "/ws"
        run = Run(
            target=Target(url, ws_url, adapter="tagless"),
            report_dir=tmp_path / f"run{len(runs)}",
            seed=5,
            run_key=b"tagless-adapter-test-run-key-32b",
            run_id="20260101T000000Z-7a9e55",
            lifecycle_timeout_s=5.0,
            codec=TAGLESS,
        )
        runs.append(run)
        wiring = Wiring(
            context=AdapterContext(base_url=url, ws_url=ws_url),
            adapter=TaglessAdapter,
            http=AiohttpClient,
            credentials=JwtCredentials(SECRET),
        )
        return Scenario(run, "test_tagless", sizes=Sizes(users=6, tenants=2), wiring=wiring)

    yield make
    for run in runs:
        run.close()


def test_without_owner_tags_a_leak_is_caught_by_canary_with_its_owner_and_victim(
    tagless_scenario: Any, singleton_service: str
) -> None:
    harness = tagless_scenario(singleton_service)
    users = harness.users()
    sender_of = {user.canary: user.key for user in users}
    harness.chat(users, messages=3, connections=1)
    leaks = [f for f in harness.run.findings if f.kind is ViolationKind.CROSS_DELIVERY]
    assert leaks, "the singleton emitter's leak went unseen without owner tags"
    for leak in leaks:
        assert leak.evidence["signal"] == "canary"
        # The sender of the leaked event's message is its owner; its receiver the victim.
        message_id = orjson.loads(leak.evidence["raw"])["message_id"]
        owner = sender_of[message_id.rsplit("-m", 1)[0]]
        assert leak.owner == owner
        assert leak.victim in sender_of.values()
        assert leak.victim != owner
    with pytest.raises(IsolationViolation, match="cross_delivery"):
        harness.verify()


def test_without_owner_tags_or_seq_a_clean_service_passes(
    tagless_scenario: Any, clean_service: str
) -> None:
    harness = tagless_scenario(clean_service)
    harness.conditions("overlapping_runs")
    users = harness.users()
    assert harness.chat(users, messages=3, connections=2) == 18
    harness.verify()
    assert harness.run.counts["events_received"] >= 18 * 2 * 5
    assert harness.run.errors == {}


def test_a_step_that_needs_the_state_api_is_not_applicable_without_http_state(
    tagless_scenario: Any, clean_service: str
) -> None:
    harness = tagless_scenario(clean_service)
    users = harness.users(2, tenants=1)
    with pytest.raises(NotApplicable) as caught:
        harness.write_state(users, "profile")
    assert str(caught.value) == (
        "not applicable: write_state needs the 'http_state' capability, "
        "which the tagless adapter does not have"
    )


def test_violations_seen_before_an_inapplicable_step_still_fail_the_scenario(
    tagless_scenario: Any, singleton_service: str
) -> None:
    harness = tagless_scenario(singleton_service)
    users = harness.users()
    harness.chat(users, messages=3, connections=1)
    with pytest.raises(IsolationViolation):
        harness.write_state(users, "profile")


def test_mixed_load_without_http_state_is_churn_and_requires_no_state_conditions(
    tagless_scenario: Any, clean_service: str
) -> None:
    harness = tagless_scenario(clean_service)
    harness.conditions("overlapping_runs", "reconnects", "same_path_concurrent_reads")
    harness.mixed_load(harness.users(), duration_s=2.0)
    harness.verify()
    assert harness.result.declared == ("overlapping_runs", "reconnects")
    assert harness.run.counts["http_probes"] == 0
    assert harness.result.notes == [
        "not required: same_path_concurrent_reads (the tagless adapter has no 'http_state')"
    ]


# -- the preflight, for an adapter without ping or a state API ---------------------------------


def preflight_with(url: str, token: str) -> None:
    user = SimUser(
        make_identity(ALICE, seed=1), token=token, canary="preflight", rng=random.Random(1)
    )
    ws_url = url.replace("http", "ws", 1) + "/ws"
    adapter = TaglessAdapter(AdapterContext(base_url=url, ws_url=ws_url))

    async def check() -> None:
        http = AiohttpClient()
        try:
            await preflight(
                adapter=adapter, user=user, http=http, base_url=url, ws_url=ws_url, timeout_s=5.0
            )
        finally:
            await http.aclose()

    asyncio.run(check())


def test_the_preflight_of_a_pingless_adapter_passes_when_a_message_starts_a_run(
    clean_service: str,
) -> None:
    preflight_with(clean_service, JwtCredentials(SECRET).mint(ALICE))


def test_the_preflight_of_a_pingless_adapter_fails_fast_on_an_unreachable_target() -> None:
    with pytest.raises(TargetUnreachable):
        preflight_with(f"http://127.0.0.1:{closed_port()}", "any-token")


def test_the_preflight_of_a_pingless_adapter_fails_fast_on_refused_credentials(
    clean_service: str,
) -> None:
    with pytest.raises(AuthRefused):
        preflight_with(clean_service, "not-a-token")


# -- the lifecycle oracle with another protocol's lifecycle -------------------------------------

SCENARIO = ScenarioId("test_adapters")
ONE_EVENT = Lifecycle(("message",))


def untagged(message_id: str, kind: str = "message") -> Received:
    """A frame of a protocol with no owner tags and no sequence numbers."""
    frame = Event(kind, None, None, "main", message_id, message_id, None, {})
    raw = orjson.dumps({"kind": kind, "id": message_id}).decode()
    return Received(SCENARIO, ALICE, ConnectionId("c1"), 1.0, 1.7e9, raw, frame)


def one_event_oracle() -> LifecycleOracle:
    oracle = LifecycleOracle(timeout_s=10.0, settle_s=0.0, lifecycle=ONE_EVENT)
    oracle.on_sent(Sent(SCENARIO, ALICE, ConnectionId("c1"), 0.0, 1.7e9, "m1", "main"))
    return oracle


def test_a_one_event_lifecycle_is_complete_with_its_one_event() -> None:
    oracle = one_event_oracle()
    assert oracle.on_received(untagged("m1")) == []
    assert oracle.finish(now=50.0) == []
    assert oracle.completed == 1


def test_a_one_event_lifecycle_without_its_event_is_lost_after_the_timeout() -> None:
    oracle = one_event_oracle()
    oracle.on_received(untagged("other"))  # the connection is alive, just not for m1
    [finding] = oracle.finish(now=50.0)
    assert finding.kind is ViolationKind.LOST_EVENT
    assert "got no message on c1" in finding.detail


def test_a_one_event_lifecycle_event_twice_is_a_duplicate_without_seq() -> None:
    oracle = one_event_oracle()
    assert oracle.on_received(untagged("m1")) == []
    [finding] = oracle.on_received(untagged("m1"))
    assert finding.kind is ViolationKind.DUPLICATE_EVENT
    assert finding.detail == "message of message m1 received twice on c1"


def test_without_seq_order_is_judged_by_event_type() -> None:
    oracle = LifecycleOracle(
        timeout_s=10.0, settle_s=0.0, lifecycle=Lifecycle(("accepted", "done"))
    )
    oracle.on_sent(Sent(SCENARIO, ALICE, ConnectionId("c1"), 0.0, 1.7e9, "m1", "main"))
    assert oracle.on_received(untagged("m1", "done")) == []
    [finding] = oracle.on_received(untagged("m1", "accepted"))
    assert finding.kind is ViolationKind.OUT_OF_ORDER
    assert finding.detail == "accepted of message m1 arrived after done on c1"


# -- the registry: the adapter setting ----------------------------------------------------------


def settings_from(tmp_path: Path, toml: str = "", **cli: object) -> Any:
    if toml:
        (tmp_path / "isoharness.toml").write_text(toml)
    return resolve_settings(cli, env={}, cwd=tmp_path)


def test_the_default_adapter_is_aep(tmp_path: Path) -> None:
    settings = settings_from(tmp_path)
    assert settings.adapter == "aep"
    factory = load_factory(settings.adapter, source=settings.source_of("adapter"))
    adapter = factory(AdapterContext(base_url="http://h", ws_url="ws://h/ws"))
    assert isinstance(adapter, AepAdapter)
    assert adapter.codec is AEP_CODEC
    assert adapter.capabilities == {"http_state", "ping", "bad_frames"}


def test_an_unknown_adapter_name_is_one_line_naming_the_key_and_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, adapter="graphql")
    assert str(caught.value) == (
        "invalid adapter 'graphql' from --adapter: "
        "one of aep, json, nats, or a hook 'package.module:factory'"
    )
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, 'adapter = "graphql"\n')
    assert str(caught.value).startswith("invalid adapter 'graphql' from isoharness.toml: ")


def test_a_hook_to_a_missing_module_is_one_line_naming_the_key_and_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_factory("no_such_package.adapter:create", source="--adapter")
    message = str(caught.value)
    assert message.startswith(
        "invalid adapter 'no_such_package.adapter:create' from --adapter: "
        "cannot import 'no_such_package.adapter' (ModuleNotFoundError: "
    )
    assert "\n" not in message


def test_a_hook_to_a_missing_factory_is_one_line_naming_the_key_and_source() -> None:
    with pytest.raises(ConfigError) as caught:
        load_factory("tests.test_adapters:no_such_factory", source="isoharness.toml")
    assert str(caught.value) == (
        "invalid adapter 'tests.test_adapters:no_such_factory' from isoharness.toml: "
        "'tests.test_adapters' has no 'no_such_factory'; name its factory"
    )


def test_a_hook_names_any_factory(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, adapter="tests.test_adapters:TaglessAdapter")
    factory = load_factory(settings.adapter, source=settings.source_of("adapter"))
    adapter = build_adapter(
        factory, AdapterContext(base_url="http://h", ws_url="ws://h/ws"), name=settings.adapter
    )
    assert adapter.name == "tagless"
    assert adapter.codec.owner_tags is False


def test_the_adapter_table_is_the_adapters_options_with_its_source(tmp_path: Path) -> None:
    table = '[adapter]\nname = "json"\nurl_path = "/events"\n[adapter.fields]\ntype = "kind"\n'
    settings = settings_from(tmp_path, table)
    assert settings.adapter == "json"
    assert settings.adapter_options == {"url_path": "/events", "fields": {"type": "kind"}}
    assert settings.adapter_options_source == "isoharness.toml [adapter]"
    (tmp_path / "isoharness.toml").unlink()
    (tmp_path / "pyproject.toml").write_text('[tool.isoharness.adapter]\ntopic = "x"\n')
    settings = resolve_settings({}, env={}, cwd=tmp_path)
    assert settings.adapter == "aep"
    assert settings.adapter_options == {"topic": "x"}
    assert settings.adapter_options_source == "pyproject.toml [tool.isoharness.adapter]"


def test_an_adapter_refusing_its_options_names_the_option_and_the_table() -> None:
    context = AdapterContext(
        base_url="http://h",
        ws_url="ws://h/ws",
        options={"topic": "x"},
        options_source="isoharness.toml [adapter]",
    )
    with pytest.raises(ConfigError) as caught:
        build_adapter(create, context, name="aep")
    assert str(caught.value) == (
        "invalid adapter option 'topic' from isoharness.toml [adapter]: "
        "the aep adapter takes no options; remove the table or choose another adapter"
    )


# -- under pytest: a hook adapter, and a scenario it cannot apply to ---------------------------

HOOK_ADAPTER = """
from harness.aep import AEP_LIFECYCLE, parse_frame, user_message
from harness.transport.websocket import WebSocketConnector


class Codec:
    name = "tagless"
    lifecycle = AEP_LIFECYCLE
    owner_tags = False

    def encode_message(self, *, message_id, thread_id, content):
        return user_message(message_id=message_id, thread_id=thread_id, content=content)

    def decode(self, raw, *, binary=False):
        return parse_frame(raw, binary=binary)


class Tagless:
    name = "tagless"
    codec = Codec()
    capabilities = frozenset()

    def __init__(self, context):
        self._url = context.ws_url

    async def open(self, user):
        return await WebSocketConnector().connect(self._url, token=user.token)

    def memory_probe(self):
        return None

    async def aclose(self):
        pass


def create(context):
    return Tagless(context)
"""

CHAT_AND_STATE = """
import pytest


@pytest.mark.conditions("overlapping_runs")
def test_users_chatting_at_once_get_only_their_own_events(harness):
    users = harness.users()
    harness.chat(users, messages=2, connections=1)
    harness.verify()


@pytest.mark.conditions("shared_identifiers")
def test_users_writing_the_same_key_read_their_own_value(harness):
    users = harness.users()
    harness.write_state(users, "profile")
    harness.verify()
"""


def test_a_scenario_the_adapter_cannot_apply_is_skipped_naming_the_capability(
    pytester: pytest.Pytester, clean_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("ISOHARNESS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ISOHARNESS_JWT_SECRET", SECRET)
    pytester.makepyfile(tagless_adapter=HOOK_ADAPTER, test_my_service=CHAT_AND_STATE)
    result = pytester.runpytest_subprocess(
        "--target-url",
        clean_service,
        "--adapter",
        "tagless_adapter:create",
        "--users",
        "4",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED *not applicable: write_state needs the 'http_state' capability, "
            "which the tagless adapter does not have"
        ]
    )
    assert result.ret == 0
    [summary_path] = [
        p for p in (pytester.path / "reports").glob("*/summary.json") if p.parent.name != "latest"
    ]
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["verdict"] == "pass"
    assert summary["target"]["adapter"] == "tagless"
    assert [s["outcome"] for s in summary["scenarios"]] == ["passed", "skipped"]
