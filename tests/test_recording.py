"""The recorder: ``events.jsonl`` lines, one record at a time or a read's frames at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.aep import parse_frame
from harness.recording import RAW_LIMIT, EventLog, Received, ReceivedBatch, received_frames
from harness.safety import Redactor
from harness.types import ConnectionId, ScenarioId, TenantId, UserId, UserKey

ALICE = UserKey(TenantId("acme"), UserId("alice"))
SECRET = "s3cret-signing-key"
FRAMES = [
    ('{"type":"agent_started","seq":1}', False),
    ('quotes " and \\ backslashes, a tab\t, a newline\n, a NUL \x00, é ✓ 𝄞', False),
    ("ok \ufffd", True),
    ("x" * (RAW_LIMIT + 5), False),
    ("", False),
    (f"an echoed secret {SECRET} and a bearer abc.def", False),
]


def batch_of(frames: list[tuple[str, bool]]) -> ReceivedBatch:
    return ReceivedBatch(
        ScenarioId("tests/test_recording.py::batch"),
        ALICE,
        ConnectionId("c7"),
        12.3456789,
        1.7e9 + 0.25,
        frames,
        [parse_frame(raw, binary=binary) for raw, binary in frames],
    )


def written(tmp_path: Path, name: str, write: Callable[[EventLog], None], **options: Any) -> bytes:
    log = EventLog(tmp_path / name, **options)
    write(log)
    log.close()
    return (tmp_path / name).read_bytes()


REDACTION = ["none", "gated", "every line"]


def log_options(redaction: str, redact: Callable[[str], str] | None = None) -> dict[str, Any]:
    redactor = Redactor([SECRET])
    redact = redact or redactor.redact
    return {
        "none": {},
        "gated": {"redact": redact, "needs_redaction": redactor.needs_redaction},
        "every line": {"redact": redact},
    }[redaction]


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


TEXT_FRAMES = [frame for frame in FRAMES if not frame[1] and len(frame[0]) <= RAW_LIMIT]


@pytest.mark.parametrize("redaction", REDACTION)
def test_a_read_of_text_frames_is_one_line_holding_them_in_order(
    tmp_path: Path, redaction: str
) -> None:
    batch = batch_of(TEXT_FRAMES)
    got = written(
        tmp_path, "batch.jsonl", lambda log: log.write_batch(batch), **log_options(redaction)
    )
    [line] = lines_of(got)
    [first] = lines_of(written(tmp_path, "one.jsonl", lambda log: log.write(batch.record(0))))
    del first["raw"]
    assert {key: value for key, value in line.items() if key != "raws"} == first
    frames = received_frames(line)
    if redaction == "none":
        assert frames == [raw for raw, _ in TEXT_FRAMES]
    else:  # only the frame with the secret and the bearer token changed
        assert frames[:-1] == [raw for raw, _ in TEXT_FRAMES[:-1]]
        assert frames[-1] == "an echoed secret *** and a bearer ***"


@pytest.mark.parametrize("redaction", REDACTION)
def test_a_read_with_a_binary_or_oversized_frame_is_written_frame_by_frame(
    tmp_path: Path, redaction: str
) -> None:
    batch = batch_of(FRAMES)

    def one_by_one(log: EventLog) -> None:
        for rec in batch.records():
            log.write(rec)

    expected = written(tmp_path, "one.jsonl", one_by_one, **log_options(redaction))
    got = written(
        tmp_path, "batch.jsonl", lambda log: log.write_batch(batch), **log_options(redaction)
    )
    assert got == expected
    assert got.count(b"\n") == len(FRAMES)
    assert (SECRET.encode() in got) is (redaction == "none")
    frames = [raw for line in lines_of(got) for raw in received_frames(line)]
    assert len(frames) == len(FRAMES)


def test_a_clean_batch_is_never_redacted_and_a_dirty_one_only_where_needed(
    tmp_path: Path,
) -> None:
    redacted: list[str] = []
    redactor = Redactor([SECRET])

    def redact(text: str) -> str:
        redacted.append(text)
        return redactor.redact(text)

    options = log_options("gated", redact)
    written(tmp_path, "clean.jsonl", lambda log: log.write_batch(batch_of(FRAMES[:3])), **options)
    written(tmp_path, "clean.jsonl", lambda log: log.write_batch(batch_of(FRAMES[:2])), **options)
    assert redacted == []
    written(tmp_path, "dirty.jsonl", lambda log: log.write_batch(batch_of(FRAMES)), **options)
    assert len(redacted) == 1
    assert SECRET in redacted[0]


def test_a_batch_holds_one_received_record_per_frame() -> None:
    batch = batch_of(FRAMES[:3])
    records = list(batch.records())
    assert records == [
        Received(
            batch.scenario,
            ALICE,
            batch.connection,
            batch.mono,
            batch.wall,
            raw,
            parse_frame(raw, binary=binary),
            binary,
        )
        for raw, binary in FRAMES[:3]
    ]
    assert batch.record(2).binary is True


def test_a_capped_log_stops_at_its_cap_leaves_a_marker_and_counts_what_it_left_out(
    tmp_path: Path,
) -> None:
    batch = batch_of(TEXT_FRAMES)
    one_line = len(written(tmp_path, "one.jsonl", lambda log: log.write_batch(batch)))
    log = EventLog(tmp_path / "capped.jsonl", max_bytes=3 * one_line + one_line // 2)
    for _ in range(10):
        log.write_batch(batch)
    log.write(batch.record(0))
    log.close()
    lines = lines_of((tmp_path / "capped.jsonl").read_bytes())
    assert [line["k"] for line in lines] == ["recv"] * 3 + ["capped"]
    assert lines[-1]["max_bytes"] == 3 * one_line + one_line // 2
    assert (log.lines, log.lines_dropped) == (3, 8)
    assert log.bytes == 3 * one_line


def test_an_uncapped_log_writes_everything(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "all.jsonl")
    for _ in range(50):
        log.write_batch(batch_of(TEXT_FRAMES))
    log.close()
    assert (log.lines, log.lines_dropped) == (50, 0)
    assert len(lines_of((tmp_path / "all.jsonl").read_bytes())) == 50
