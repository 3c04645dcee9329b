"""The recorder: ``events.jsonl`` lines, one record at a time or a read's frames at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.aep import parse_frame
from harness.recording import RAW_LIMIT, EventLog, Received, ReceivedBatch
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


@pytest.mark.parametrize("redaction", ["none", "gated", "every line"])
def test_a_batch_is_written_as_its_records_are_one_by_one(tmp_path: Path, redaction: str) -> None:
    redactor = Redactor([SECRET])
    options: dict[str, Any] = {
        "none": {},
        "gated": {"redact": redactor.redact, "needs_redaction": redactor.needs_redaction},
        "every line": {"redact": redactor.redact},
    }[redaction]
    batch = batch_of(FRAMES)

    def one_by_one(log: EventLog) -> None:
        for rec in batch.records():
            log.write(rec)

    expected = written(tmp_path, "one.jsonl", one_by_one, **options)
    got = written(tmp_path, "batch.jsonl", lambda log: log.write_batch(batch), **options)
    assert got == expected
    assert got.count(b"\n") == len(FRAMES)
    assert (SECRET.encode() in got) is (redaction == "none")


def test_a_clean_batch_is_never_redacted_and_a_dirty_one_only_where_needed(
    tmp_path: Path,
) -> None:
    redacted: list[str] = []
    redactor = Redactor([SECRET])

    def redact(text: str) -> str:
        redacted.append(text)
        return redactor.redact(text)

    options = {"redact": redact, "needs_redaction": redactor.needs_redaction}
    written(tmp_path, "clean.jsonl", lambda log: log.write_batch(batch_of(FRAMES[:3])), **options)
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
