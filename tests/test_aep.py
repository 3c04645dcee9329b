"""The AEP/1 codec: literal frames in, typed frames out, never an exception."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.aep import (
    BAD_FRAME_KINDS,
    ErrorFrame,
    Event,
    Malformed,
    Pong,
    bad_frame,
    decode_batch,
    parse_frame,
    user_message,
)
from harness.reference.protocol import BadFrame, decode_frame
from tests.builders import ALICE, event


def test_user_message_has_the_protocol_fields():
    frame = orjson.loads(user_message(message_id="m1", thread_id="t", content="hi"))
    assert frame == {"type": "user_message", "message_id": "m1", "thread_id": "t", "content": "hi"}


@pytest.mark.parametrize("kind", BAD_FRAME_KINDS)
def test_a_bad_frame_carries_its_content_and_is_one_aep1_makes_the_service_refuse(kind):
    text = bad_frame(kind, message_id="iso-bad1", thread_id="main", content="iso note")
    assert orjson.loads(text)["content"] == "iso note"
    assert isinstance(decode_frame(text), BadFrame)  # the reference service's reading of §3


def test_a_bad_frame_is_a_user_message_without_thread_id_or_of_an_unknown_type():
    fields = {"message_id": "m", "thread_id": "t", "content": "c"}
    assert orjson.loads(bad_frame("missing_thread_id", **fields)) == {
        "type": "user_message",
        "message_id": "m",
        "content": "c",
    }
    assert orjson.loads(bad_frame("unknown_type", **fields)) == {"type": "user_note", **fields}
    with pytest.raises(ValueError, match="^unknown bad frame kind 'x'; use one of: missing_th"):
        bad_frame("x", **fields)


def test_a_lifecycle_event_decodes_with_every_field():
    frame = parse_frame(orjson.dumps(event(ALICE, "m1", "agent_started", 1)))
    assert frame == Event("agent_started", "alice", "acme", "main", "m1", "r1", 1, {})


def test_pong_and_error_frames():
    assert parse_frame('{"type":"pong"}') == Pong()
    assert parse_frame('{"type":"error","code":"bad_request","message":"x"}') == ErrorFrame(
        "bad_request", "x"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ("42", "a JSON int, not an object"),
        ('{"type": "agent_dreaming"}', "unknown type 'agent_dreaming'"),
        ('{"type": "agent_started", "seq": 1}', "agent_started without user_id"),
    ],
)
def test_malformed_frames_say_why(raw, reason):
    frame = parse_frame(raw)
    assert isinstance(frame, Malformed)
    assert frame.reason.startswith(reason)


def test_mistyped_fields_are_malformed():
    obj = event(ALICE, "m1", "agent_started", 1) | {"seq": "1", "data": []}
    frame = parse_frame(orjson.dumps(obj))
    assert isinstance(frame, Malformed)
    assert frame.reason == "agent_started with mistyped seq, data"


@pytest.mark.parametrize("seq", ["true", "1.0", "null", '"1"'])
def test_a_seq_that_is_not_an_integer_is_malformed_on_either_path(seq):
    raw = (
        orjson.dumps(event(ALICE, "m1", "agent_started", 1))
        .decode()
        .replace('"seq":1', f'"seq":{seq}')
    )
    [frame], every_event = decode_batch([(raw, False)])
    assert frame == parse_frame(raw)
    assert isinstance(frame, Malformed)
    assert frame.reason == "agent_started with mistyped seq"
    assert not every_event


def test_a_seq_of_any_size_is_read_exactly():
    for seq in (2**63, 2**70, -(2**70)):
        raw = orjson.dumps(event(ALICE, "m1", "agent_started", 1)).decode()
        raw = raw.replace('"seq":1', f'"seq":{seq}')
        [frame], every_event = decode_batch([(raw, False)])
        assert frame == parse_frame(raw)
        assert isinstance(frame, Event)
        assert frame.seq == seq
        assert every_event


def test_binary_frames_are_malformed():
    assert isinstance(parse_frame("{}", binary=True), Malformed)


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("utf-8", "replace"))))
def test_no_text_makes_the_parser_raise(text):
    parse_frame(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_no_json_value_makes_the_parser_raise(value):
    parse_frame(json.dumps(value))
