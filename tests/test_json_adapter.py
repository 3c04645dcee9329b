"""The declarative JSON adapter: its options, its codec on literal frames, its auth flows.

The codec is pure, so frames here are literal strings. Connections go
through the in-memory transport twin, whose server side is a coroutine in
the test; the end-to-end runs against the reference service are in
``test_json_adapter_e2e.py``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tomllib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e_helpers import seconds

from harness.adapters import AdapterContext
from harness.adapters.json_ws import JsonAdapter, JsonCodec, create, parse_options
from harness.adapters.registry import load_factory
from harness.aep import ErrorFrame, Event, Malformed, Pong
from harness.canary import mint_canary
from harness.errors import AuthRefused, ConfigError, ProtocolMismatch, TargetError
from harness.transport.base import ChannelClosed
from harness.transport.memory import MemoryConnector, ServerSide
from harness.types import TenantId, UserId, UserKey
from harness.users import SimUser, make_identity

SOURCE = "isoharness.toml [adapter]"
CANARY = mint_canary(b"k" * 16, UserKey(TenantId("t0"), UserId("u0")))

#: The renamed reference service (``--dialect renamed``), described in full.
RENAMED: dict[str, Any] = {
    "fields": {
        "type": "kind",
        "message_id": "msg",
        "thread_id": "conv",
        "run_id": "run",
        "user_id": "who.uid",
        "tenant_id": "who.org",
        "seq": "n",
        "data": "body",
        "error_code": "code",
        "error_message": "detail",
    },
    "lifecycle": ["run.start", "run.think", "tool.call", "tool.done", "run.end"],
    "repeatable": ["run.think"],
    "error_types": ["oops"],
    "ignore_types": ["pong"],
    "message": {"op": "say", "conv": "{thread_id}", "msg": "{message_id}", "text": "{content}"},
    "auth": {
        "mode": "first_message",
        "message": {"op": "hello", "auth": {"bearer": "{token}"}},
        "ready_type": "hello.ok",
        "refused_types": ["hello.denied"],
        "timeout": 5,
    },
}
#: The least a table can say.
MINIMAL: dict[str, Any] = {
    "fields": {"type": "t", "message_id": "m"},
    "lifecycle": ["start", "end"],
    "message": {"m": "{message_id}", "c": "{content}"},
}


def codec(options: dict[str, Any] = RENAMED) -> JsonCodec:
    return JsonCodec(parse_options(options, SOURCE))


def frame(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def renamed_event(**changes: Any) -> dict[str, Any]:
    event = {
        "kind": "run.start",
        "who": {"uid": "u0", "org": "t0"},
        "conv": "main",
        "msg": f"{CANARY}-m1",
        "run": "r1",
        "n": 1,
        "body": {"x": 1},
    }
    event.update(changes)
    return event


def with_options(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with top-level keys replaced (``None`` removes one)."""
    options = {**base, **changes}
    return {k: v for k, v in options.items() if v is not None}


# -- decoding --------------------------------------------------------------------------------


def test_an_event_is_read_from_its_renamed_and_nested_fields():
    decoded = codec().decode(frame(**renamed_event()))
    assert decoded == Event(
        type="run.start",
        user_id="u0",
        tenant_id="t0",
        thread_id="main",
        message_id=f"{CANARY}-m1",
        run_id="r1",
        seq=1,
        data={"x": 1},
    )


def test_integer_ids_are_read_as_strings():
    decoded = codec().decode(frame(**renamed_event(run=42, who={"uid": 7, "org": 9})))
    assert isinstance(decoded, Event)
    assert (decoded.run_id, decoded.user_id, decoded.tenant_id) == ("42", "7", "9")


def test_without_owner_seq_run_and_data_paths_events_carry_none_and_the_message_is_the_run():
    minimal = codec(MINIMAL)
    assert minimal.owner_tags is False
    assert codec().owner_tags is True
    decoded = minimal.decode(frame(t="start", m="m1", extra={"ignored": True}))
    assert decoded == Event(
        type="start",
        user_id=None,
        tenant_id=None,
        thread_id="",
        message_id="m1",
        run_id="m1",
        seq=None,
        data={},
    )


def test_the_lifecycle_comes_from_the_table():
    lifecycle = codec().lifecycle
    assert lifecycle.events == ("run.start", "run.think", "tool.call", "tool.done", "run.end")
    assert lifecycle.repeatable == frozenset({"run.think"})
    assert lifecycle.terminal == "run.end"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (frame(**renamed_event(who={"uid": "u0"})), "run.start without who.org"),
        (frame(**{**renamed_event(), "msg": None} | {}), "run.start with mistyped msg"),
        (
            frame(**{k: v for k, v in renamed_event().items() if k not in ("n", "conv")}),
            "run.start without conv, n",
        ),
        (frame(**renamed_event(n=True)), "run.start with mistyped n"),
        (frame(**renamed_event(n="1", body=[])), "run.start with mistyped n, body"),
        (frame(**renamed_event(who="u0")), "run.start without who.uid, who.org"),
        (frame(**renamed_event(kind="run.paused")), "unknown type 'run.paused'"),
        (frame(**renamed_event(kind="x" * 100)), "unknown type '" + "x" * 63 + "…"),
        (frame(**renamed_event(kind=3)), "type at kind is not a string: 3"),
        (frame(type="run.start"), "no type at kind"),
        ("[1, 2]", "a JSON list, not an object"),
    ],
)
def test_a_frame_that_does_not_fit_is_malformed_with_the_reason(raw, reason):
    decoded = codec().decode(raw)
    assert isinstance(decoded, Malformed)
    assert decoded.reason == reason


def test_text_that_is_not_json_and_binary_frames_are_malformed():
    not_json = codec().decode('{"kind": ')
    assert isinstance(not_json, Malformed)
    assert not_json.reason.startswith("not valid JSON")
    binary = codec().decode(frame(**renamed_event()), binary=True)
    assert binary == Malformed("binary frame (the json adapter reads JSON text frames)")


def test_error_types_and_refusals_are_errors_with_their_code_and_message():
    assert codec().decode(frame(kind="oops", code="bad_request", detail="no")) == ErrorFrame(
        "bad_request", "no"
    )
    # No code field: the type stands in; a non-string message is shown as JSON.
    assert codec().decode(frame(kind="hello.denied", detail={"why": 1})) == ErrorFrame(
        "hello.denied", '{"why":1}'
    )


def test_ignored_types_and_the_ready_frame_are_not_data():
    assert codec().decode(frame(kind="pong")) == Pong()
    assert codec().decode(frame(kind="hello.ok", who={"uid": "u0"})) == Pong()


# -- encoding --------------------------------------------------------------------------------


def test_the_message_template_is_filled_and_serialised_as_json():
    text = codec().encode_message(
        message_id=f"{CANARY}-m1", thread_id="main", content='say "hi"\n\\ {ok} ✓'
    )
    assert orjson.loads(text) == {
        "op": "say",
        "conv": "main",
        "msg": f"{CANARY}-m1",
        "text": 'say "hi"\n\\ {ok} ✓',
    }


def test_templates_fill_nested_tables_lists_and_the_canary_and_keep_other_values():
    options = with_options(
        MINIMAL,
        message={
            "v": 2,
            "urgent": False,
            "payload": {"parts": ["{content}", "tag:{canary}"], "id": "<{message_id}>"},
            "literal": "{{not a placeholder}}",
            "thread": "{thread_id}/{thread_id}",
        },
    )
    text = codec(options).encode_message(message_id=f"{CANARY}-m7", thread_id="t", content="body")
    assert orjson.loads(text) == {
        "v": 2,
        "urgent": False,
        "payload": {"parts": ["body", f"tag:{CANARY}"], "id": f"<{CANARY}-m7>"},
        "literal": "{not a placeholder}",
        "thread": "t/t",
    }


# -- the options table -----------------------------------------------------------------------


def error_of(options: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_options(options, SOURCE)
    return str(caught.value)


def auth(**table: Any) -> dict[str, Any]:
    return with_options(MINIMAL, auth=table)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            with_options(MINIMAL, feilds={}),
            "invalid adapter option 'feilds' from isoharness.toml [adapter]: "
            "unknown key; did you mean 'fields'?",
        ),
        (
            with_options(MINIMAL, fields={"type": "t", "message_id": "m", "user": "u"}),
            "invalid adapter option 'fields.user' from isoharness.toml [adapter]: "
            "unknown key; did you mean 'fields.user_id'?",
        ),
        (
            with_options(MINIMAL, fields=None),
            "invalid adapter option 'fields' from isoharness.toml [adapter]: missing; the json "
            "adapter needs a [adapter.fields] table of dotted paths, such as type",
        ),
        (
            with_options(MINIMAL, fields={"message_id": "m"}),
            "invalid adapter option 'fields.type' from isoharness.toml [adapter]: missing; "
            "the json adapter needs the dotted path of the event's type",
        ),
        (
            with_options(MINIMAL, fields={"type": "t", "message_id": "who..id"}),
            "invalid fields.message_id 'who..id' from isoharness.toml [adapter]: "
            "a dotted path of field names, such as 'type' or 'meta.owner.id'",
        ),
        (
            with_options(MINIMAL, fields={"type": 1, "message_id": "m"}),
            "invalid fields.type 1 from isoharness.toml [adapter]: "
            "a dotted path of field names, such as 'type' or 'meta.owner.id'",
        ),
        (
            with_options(MINIMAL, fields="kind"),
            "invalid fields 'kind' from isoharness.toml [adapter]: a table",
        ),
        (
            with_options(MINIMAL, fields={"type": "t", "message_id": "m", "user_id": "uid"}),
            "invalid fields.user_id 'uid' from isoharness.toml [adapter]: needs "
            "fields.tenant_id too: an owner is a (tenant, user) pair; give both, or neither "
            "(canaries alone then decide)",
        ),
        (
            with_options(MINIMAL, lifecycle=[]),
            "invalid lifecycle [] from isoharness.toml [adapter]: "
            "a list of distinct non-empty strings, at least one",
        ),
        (
            with_options(MINIMAL, lifecycle=["a", "a"]),
            "invalid lifecycle ['a', 'a'] from isoharness.toml [adapter]: "
            "a list of distinct non-empty strings, at least one",
        ),
        (
            with_options(MINIMAL, lifecycle=None),
            "invalid adapter option 'lifecycle' from isoharness.toml [adapter]: missing; "
            "the json adapter needs the list of event types of one run, in order",
        ),
        (
            with_options(MINIMAL, repeatable=["thinking"]),
            "invalid repeatable ['thinking'] from isoharness.toml [adapter]: "
            "'thinking' is not in lifecycle",
        ),
        (
            with_options(MINIMAL, ignore_types=["end"]),
            "invalid ignore_types ['end'] from isoharness.toml [adapter]: "
            "'end' is in lifecycle too",
        ),
        (
            with_options(MINIMAL, message={"m": "{message_id}"}),
            "invalid message {'m': '{message_id}'} from isoharness.toml [adapter]: has no "
            "{content}; the template needs {message_id} and {content} in its string values",
        ),
        (
            with_options(MINIMAL, message={"m": "{msg_id}", "c": "{content}"}),
            "invalid message.m '{msg_id}' from isoharness.toml [adapter]: unknown placeholder "
            "{msg_id}; allowed: {message_id}, {thread_id}, {content}, {canary}",
        ),
        (
            with_options(MINIMAL, message={"m": "{message_id}", "c": "{content"}),
            "invalid message.c '{content' from isoharness.toml [adapter]: "
            "an unmatched brace; write {{ or }} for a literal one",
        ),
        (
            with_options(MINIMAL, message='{"m": "{message_id}"}'),
            'invalid message \'{"m": "{message_id}"}\' from isoharness.toml [adapter]: a table '
            "(the JSON object to send) whose strings may hold {message_id}, {thread_id}, "
            "{content}, {canary}",
        ),
        (
            with_options(
                MINIMAL, message={"m": "{message_id}", "c": "{content}", "x": float("nan")}
            ),
            "invalid message.x nan from isoharness.toml [adapter]: "
            "a finite number (JSON has no inf or nan)",
        ),
        (
            with_options(MINIMAL, path="ws"),
            "invalid path 'ws' from isoharness.toml [adapter]: "
            "a URL path starting with /, such as /ws",
        ),
        (
            auth(mode="cookie"),
            "invalid auth.mode 'cookie' from isoharness.toml [adapter]: "
            "one of header, query, subprotocol, first_message, none",
        ),
        (
            auth(mode="query", header="X-Token"),
            "invalid adapter option 'auth.header' from isoharness.toml [adapter]: "
            "unknown key; not used by auth mode 'query'; its keys: auth.param",
        ),
        (
            auth(mode="first_message", mesage={}),
            "invalid adapter option 'auth.mesage' from isoharness.toml [adapter]: "
            "unknown key; did you mean 'auth.message'?",
        ),
        (
            auth(mode="header", value="Bearer"),
            "invalid auth.value 'Bearer' from isoharness.toml [adapter]: "
            "has no {token}; the template must carry the token",
        ),
        (
            auth(mode="header", header="X Token"),
            "invalid auth.header 'X Token' from isoharness.toml [adapter]: "
            "an HTTP header name, such as Authorization",
        ),
        (
            auth(mode="first_message"),
            "invalid adapter option 'auth.message' from isoharness.toml [adapter]: "
            "missing; the json adapter needs the table to send first, with {token}",
        ),
        (
            auth(mode="first_message", message={"op": "hello"}),
            "invalid auth.message {'op': 'hello'} from isoharness.toml [adapter]: has no "
            "{token}; the template needs {token} in its string values",
        ),
        (
            auth(mode="first_message", message={"t": "{token}"}, refused_types=["no"]),
            "invalid auth.refused_types ['no'] from isoharness.toml [adapter]: "
            "needs auth.ready_type: the frame that ends the wait for a refusal",
        ),
        (
            auth(mode="first_message", message={"t": "{token}"}, ready_type="end"),
            "invalid auth.ready_type 'end' from isoharness.toml [adapter]: "
            "'end' is in lifecycle too",
        ),
        (
            auth(mode="first_message", message={"t": "{token}"}, ready_type="ok", timeout=0),
            "invalid auth.timeout 0 from isoharness.toml [adapter]: "
            "a number of seconds, 0 < timeout <= 600",
        ),
        (
            auth(mode="subprotocol", protocols="chat"),
            "invalid auth.protocols 'chat' from isoharness.toml [adapter]: "
            "a list of distinct non-empty strings",
        ),
    ],
)
def test_every_mistake_in_the_table_is_one_line_naming_key_value_source_and_fix(options, message):
    assert error_of(options) == message


def test_the_renamed_and_minimal_tables_are_valid():
    assert parse_options(RENAMED, SOURCE).auth.mode == "first_message"
    assert parse_options(MINIMAL, SOURCE).auth.mode == "header"


def test_create_checks_the_table_and_applies_the_path():
    context = AdapterContext(
        base_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/ws",
        options=with_options(MINIMAL, path="/socket"),
        options_source=SOURCE,
    )
    adapter = create(context)
    assert adapter.ws_url == "ws://127.0.0.1:9/socket"
    assert (adapter.name, adapter.capabilities, adapter.memory_probe()) == (
        "json",
        frozenset(),
        None,
    )
    empty = AdapterContext(base_url="http://h", ws_url="ws://h/ws", options_source=SOURCE)
    with pytest.raises(ConfigError, match="'fields' from isoharness.toml"):
        create(empty)


# -- connecting ------------------------------------------------------------------------------

Handler = Callable[[ServerSide], Coroutine[Any, Any, None]]


def user(token: str = "tok-1") -> SimUser:
    key = UserKey(TenantId("t0"), UserId("u0"))
    return SimUser(make_identity(key, seed=1), token=token, canary=CANARY, rng=random.Random(1))


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(seconds(10)):
            await test()

    asyncio.run(bounded())


async def open_with(
    options: dict[str, Any], handler: Handler, *, token: str = "tok-1"
) -> tuple[JsonAdapter, list[ServerSide], Any]:
    servers: list[ServerSide] = []

    async def serve(server: ServerSide) -> None:
        servers.append(server)
        await handler(server)

    adapter = JsonAdapter(parse_options(options, SOURCE), MemoryConnector(serve), "ws://t/ws")
    channel = await adapter.open(user(token))
    await asyncio.sleep(0)
    return adapter, servers, channel


async def idle(server: ServerSide) -> None:
    await server.recv()


def test_header_auth_sends_the_header_template_and_no_bearer_token():
    async def body() -> None:
        options = auth(mode="header", header="X-Api-Key", value="key {tenant}/{user} {token}")
        _, servers, channel = await open_with(options, idle)
        assert servers[0].headers == {"X-Api-Key": "key t0/u0 tok-1"}
        assert servers[0].token == ""
        await channel.close()

    run(body)


def test_query_auth_puts_the_token_in_the_named_parameter():
    async def body() -> None:
        _, servers, channel = await open_with(auth(mode="query", param="access_token"), idle)
        assert servers[0].url == "ws://t/ws?access_token=tok-1"
        await channel.close()

    run(body)


def test_subprotocol_auth_offers_the_fixed_protocols_then_the_token():
    async def body() -> None:
        options = auth(mode="subprotocol", value="bearer.{token}", protocols=["chat.v1"])
        _, servers, channel = await open_with(options, idle)
        assert servers[0].subprotocols == ("chat.v1", "bearer.tok-1")
        assert servers[0].headers == {}
        await channel.close()

    run(body)


def test_first_message_auth_waits_for_ready_and_keeps_the_frames_after_it():
    async def handler(server: ServerSide) -> None:
        hello = await server.recv()
        assert hello is not None
        assert orjson.loads(hello) == {"op": "hello", "auth": {"bearer": "tok-1"}}
        await server.send(frame(kind="motd", text="welcome"))  # before ready: not user data
        await server.send(frame(kind="hello.ok"))
        await server.send(frame(**renamed_event()))
        await server.recv()

    async def body() -> None:
        adapter, _, channel = await open_with(RENAMED, handler)
        text, binary = await channel.recv()
        assert adapter.codec.decode(text, binary=binary) == codec().decode(frame(**renamed_event()))
        await channel.close()

    run(body)


def test_first_message_without_ready_type_returns_once_sent():
    got: list[str | None] = []

    async def handler(server: ServerSide) -> None:
        got.append(await server.recv())
        await server.recv()

    async def body() -> None:
        options = auth(mode="first_message", message={"token": "{token}"})
        _, _, channel = await open_with(options, handler)
        await asyncio.sleep(0)
        assert got == ['{"token":"tok-1"}']
        await channel.close()

    run(body)


def test_a_refusal_frame_is_auth_refused_with_the_frame():
    async def handler(server: ServerSide) -> None:
        await server.recv()
        await server.send(frame(kind="hello.denied", why="unauthorized"))
        await server.close(4401, "unauthorized")

    async def body() -> None:
        with pytest.raises(AuthRefused) as caught:
            await open_with(RENAMED, handler, token="bad")
        assert str(caught.value) == (
            "target ws://t/ws is unusable: the auth message was refused: "
            """'{"kind":"hello.denied","why":"unauthorized"}'"""
        )

    run(body)


def test_a_refusal_close_code_is_auth_refused_and_another_close_a_target_error():
    async def refuse(server: ServerSide) -> None:
        await server.recv()
        await server.close(4403, "forbidden")

    async def crash(server: ServerSide) -> None:
        await server.recv()
        await server.close(1011, "internal error")

    async def body() -> None:
        with pytest.raises(AuthRefused) as refused:
            await open_with(RENAMED, refuse)
        assert refused.value.reason == (
            "the connection was closed after the auth message (4403 forbidden)"
        )
        with pytest.raises(TargetError) as failed:
            await open_with(RENAMED, crash)
        assert not isinstance(failed.value, AuthRefused)
        assert failed.value.reason == (
            "the connection closed during authentication "
            "(connection closed by server (code 1011): internal error)"
        )

    run(body)


def test_no_ready_frame_within_the_timeout_is_a_protocol_mismatch_and_the_channel_is_dropped():
    closed: list[str | None] = []

    async def silent(server: ServerSide) -> None:
        await server.recv()
        closed.append(await server.recv())

    async def body() -> None:
        options = {**RENAMED, "auth": {**RENAMED["auth"], "timeout": 0.05}}
        with pytest.raises(ProtocolMismatch) as caught:
            await open_with(options, silent)
        assert caught.value.reason == "no 'hello.ok' frame within 0.05s of the auth message"
        await asyncio.sleep(0.01)
        assert closed == [None]

    run(body)


def test_a_channel_refused_at_the_handshake_stays_auth_refused():
    async def body() -> None:
        adapter = JsonAdapter(
            parse_options(auth(mode="query"), SOURCE),
            MemoryConnector(idle, accept=lambda token: token == "good"),
            "ws://t/ws",
        )
        with pytest.raises(AuthRefused):
            await adapter.open(user("bad"))
        channel = await adapter.open(user("good"))
        await channel.close()
        with pytest.raises(ChannelClosed):
            await channel.send("x")

    run(body)


# -- the README's Python adapter -------------------------------------------------------------


def readme_adapter_example() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Testing your own service", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_adapter_loads_by_name_and_decodes_its_lines(
    tmp_path, monkeypatch, request
):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(readme_adapter_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: [sys.modules.pop(n, None) for n in ("mypkg.adapter", "mypkg")])
    factory = load_factory("mypkg.adapter:create", source="isoharness.toml")
    adapter = factory(AdapterContext(base_url="http://h", ws_url="ws://h/ws"))
    assert (adapter.name, adapter.capabilities, adapter.memory_probe()) == (
        "pipe",
        frozenset(),
        None,
    )
    codec = adapter.codec
    assert codec.encode_message(message_id="m1", thread_id="t", content="hi") == "SAY|t|m1|hi"
    assert codec.decode("token|t0|u0|m1|2|a|b") == Event(
        type="token",
        user_id="u0",
        tenant_id="t0",
        thread_id="",
        message_id="m1",
        run_id="m1",
        seq=2,
        data={"text": "a|b"},
    )
    assert codec.decode("ERR|nope") == ErrorFrame("error", "nope")
    assert isinstance(codec.decode("start|t0|u0|m1|x|y"), Malformed)


def test_the_readme_config_is_valid_and_describes_the_renamed_service():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Testing your own service", 1)[1]
    config = tomllib.loads(section.split("```toml\n", 1)[1].split("```", 1)[0])
    table = dict(config["adapter"])
    assert table.pop("name") == "json"
    assert parse_options(table, SOURCE) == parse_options(
        {**RENAMED, "auth": {**RENAMED["auth"], "timeout": 10}}, SOURCE
    )
