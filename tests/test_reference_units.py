"""Sans-I/O parts of the reference service, driven directly: frames, events, stores, auth."""

from __future__ import annotations

import random
import time

import jwt
import pytest

from harness.reference.auth import Identity, decode_token, token_from
from harness.reference.faults import FAULTS, ProfileCache, assemble, conflict
from harness.reference.metrics import Metrics
from harness.reference.protocol import (
    BadFrame,
    Ping,
    UserMessage,
    decode_frame,
    error_frame,
    valid_key,
)
from harness.reference.runs import RunSpec, lifecycle_events
from harness.reference.store import StateStore, ThreadStore

SECRET = "unit-test-secret-of-at-least-32-bytes"
ANN = Identity("acme", "ann")
BEN = Identity("acme", "ben")


def test_decode_frame_accepts_ping_and_user_message() -> None:
    assert decode_frame('{"type": "ping"}') == Ping()
    frame = '{"type": "user_message", "message_id": "m", "thread_id": "t", "content": "", "x": 1}'
    assert decode_frame(frame) == UserMessage("m", "t", "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "frame is not valid JSON"),
        ("[]", "frame is not a JSON object"),
        ('{"type": 1}', "unknown frame type '1'"),
        ('{"type": "user_message"}', "user_message needs a string field 'message_id'"),
        (
            '{"type": "user_message", "message_id": "", "thread_id": "t", "content": ""}',
            "message_id is empty",
        ),
        (
            '{"type": "user_message", "message_id": "m", "thread_id": "", "content": ""}',
            "thread_id is empty",
        ),
    ],
)
def test_decode_frame_names_what_is_wrong(text: str, reason: str) -> None:
    assert decode_frame(text) == BadFrame(reason)


def test_error_frame_has_the_protocol_shape() -> None:
    assert error_frame("nope") == '{"type":"error","code":"bad_request","message":"nope"}'


@pytest.mark.parametrize(
    ("key", "valid"),
    [("a", True), ("A.z_0:-9", True), ("k" * 128, True), ("", False), ("k" * 129, False),
     ("a/b", False), ("a b", False), ("é", False), ("a\n", False)],
)  # fmt: skip
def test_valid_key(key: str, valid: bool) -> None:
    assert valid_key(key) is valid


def test_lifecycle_events_number_seq_and_fix_history() -> None:
    spec = RunSpec(ANN, "t", "m2", "hi", "r1", ("m1", "m2"))
    events = lifecycle_events(spec, thoughts=2)
    assert [e["type"] for e in events] == [
        "agent_started", "agent_thinking", "agent_thinking",
        "tool_executing", "tool_completed", "agent_completed",
    ]  # fmt: skip
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert {(e["user_id"], e["tenant_id"], e["run_id"]) for e in events} == {("ann", "acme", "r1")}
    assert events[-1]["data"] == {"result": "hi", "history": ["m1", "m2"]}


def test_state_store_is_per_user_and_evicts_least_recently_used() -> None:
    store = StateStore(max_entries=2)
    store.put(ANN, "k", b"1")
    store.put(BEN, "k", b"2")
    assert store.get(ANN, "k") == b"1"  # now BEN's entry is the oldest
    store.put(ANN, "j", b"3")
    assert (store.get(ANN, "k"), store.get(BEN, "k"), store.get(ANN, "j")) == (b"1", None, b"3")


def test_state_store_evicts_by_bytes() -> None:
    store = StateStore(max_bytes=1000)
    for n in range(10):
        store.put(ANN, f"k{n}", b"x" * 300)
    assert len(store) == 2


def test_thread_store_caps_messages_and_cleans_its_index_on_eviction() -> None:
    store = ThreadStore(max_threads=2, max_messages=3)
    assert [store.append(ANN, "t", f"m{n}", "c") for n in range(4)][-1] == ["m1", "m2", "m3"]
    store.append(BEN, "t", "b1", "c")
    store.append(BEN, "u", "b2", "c")  # evicts ANN's thread
    assert store.threads_of(ANN) == []
    assert [t.thread_id for t in store.threads_of(BEN)] == ["t", "u"]
    assert store.get(ANN, "t") is None


def test_decode_token_requires_sub_tenant_and_exp() -> None:
    def make(**claims: object) -> str:
        return jwt.encode(claims, SECRET, algorithm="HS256")

    exp = int(time.time()) + 60
    assert decode_token(make(sub="ann", tenant="acme", exp=exp), SECRET) == ANN
    assert decode_token(make(sub="ann", tenant="acme"), SECRET) is None
    assert decode_token(make(sub="ann", exp=exp), SECRET) is None
    assert decode_token(make(sub="ann", tenant="acme", exp=exp - 120), SECRET) is None
    assert decode_token(make(sub="ann", tenant="acme", exp=exp), SECRET[::-1]) is None


def test_token_from_prefers_the_header_and_allows_query_only_when_asked() -> None:
    assert token_from({"Authorization": "Bearer abc"}, {"token": "q"}, allow_query=True) == "abc"
    assert token_from({"Authorization": "Basic abc"}, {"token": "q"}, allow_query=True) == ""
    assert token_from({}, {"token": "q"}, allow_query=True) == "q"
    assert token_from({}, {"token": "q"}, allow_query=False) == ""


def test_faults_that_replace_one_part_cannot_be_combined() -> None:
    assert conflict(["lost_event", "noisy", "dirty_pipe"]) is None
    assert conflict(["tenant_broadcast", "reconnect_registry"]) == (
        "faults reconnect_registry and tenant_broadcast replace the same part; choose one"
    )
    with pytest.raises(ValueError, match="unknown fault 'nope'; valid faults: singleton_emitter"):
        assemble(["nope"], think_ms=(1, 2), leak_kb=1, metrics=Metrics(), rng=random.Random(0))


def test_every_fault_assembles() -> None:
    for name in FAULTS:
        assemble([name], think_ms=(1, 2), leak_kb=1, metrics=Metrics(), rng=random.Random(0))


def test_noisy_profile_cache_is_bounded() -> None:
    class FakeConn:
        def __init__(self, n: int) -> None:
            self.id, self.user = n, ANN

    cache = ProfileCache(max_entries=10, entry_bytes=16)
    for n in range(100):
        cache.warm(FakeConn(n))  # type: ignore[arg-type]
    assert len(cache) == 10
