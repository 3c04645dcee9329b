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
    # Depth-first with an explicit stack, not recursion: orjson parses frames
    # nested up to 1024 deep, and a RecursionError must not hide a canary.
    stack: list[tuple[Any, str, bool]] = [(obj, path, False)]
    while stack:
        node, where, is_key = stack.pop()
        if is_key:
            if needle in node:
                return f"{where} (key)"
        elif isinstance(node, str):
            if needle in node:
                return where or "$"
        elif isinstance(node, dict):
            for key, value in reversed(node.items()):
                child = f"{where}.{key}" if where else str(key)
                stack.append((value, child, False))
                stack.append((str(key), child, True))
        elif isinstance(node, list):
            for index in range(len(node) - 1, -1, -1):
                stack.append((node[index], f"{where}[{index}]", False))
    return None
