"""Helpers that build the evidence part of a finding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

EVIDENCE_RAW_LIMIT = 4096


def iso_time(wall: float) -> str:
    """Wall-clock seconds as an ISO-8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def clip(text: str, limit: int = EVIDENCE_RAW_LIMIT) -> str:
    """``text``, cut to ``limit`` characters with a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated, {len(text)} characters in all]"


def locate(obj: Any, needle: str, path: str = "") -> str | None:
    """The JSON path (``data.history[2]``) of the first string containing ``needle``."""
    if isinstance(obj, str):
        return path or "$" if needle in obj else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if needle in str(key):
                return f"{path}.{key} (key)" if path else f"{key} (key)"
            found = locate(value, needle, f"{path}.{key}" if path else str(key))
            if found:
                return found
    if isinstance(obj, list):
        for index, value in enumerate(obj):
            found = locate(value, needle, f"{path}[{index}]")
            if found:
                return found
    return None
