"""Read numbers out of a JSON monitoring endpoint (NATS ``/varz`` ``mem`` …).

A path is dotted: ``mem``, ``a.b.0.c`` (a number picks a list element). The
HTTP client is injected (:data:`~harness.probes.metrics.Fetch`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from harness.errors import ProtocolMismatch, UsageError
from harness.probes.metrics import Fetch, fetch_text, public_url

__all__ = ["extract_number", "json_source", "read_json_number", "read_json_numbers"]


def extract_number(document: Any, path: str, *, target: str) -> float:
    """The number at dotted ``path`` in a decoded JSON ``document``.

    Args:
        document: what ``json.loads`` returned.
        path: ``key`` or ``key.key.index…``.
        target: the endpoint, for messages.

    Raises:
        UsageError: ``path`` is empty or has an empty part.
        ProtocolMismatch: the path does not lead to a finite number; the
            message names the path, where it stopped and what was there.
    """
    parts = path.split(".")
    if not all(parts):
        raise UsageError(f"invalid JSON path {path!r}: use dotted keys like 'mem' or 'a.b.0.c'")
    node = document
    for depth, part in enumerate(parts):
        here = repr(".".join(parts[:depth])) if depth else "the top level"
        if isinstance(node, dict):
            if part not in node:
                keys = ", ".join(map(repr, sorted(node)[:10])) or "none"
                raise ProtocolMismatch(
                    target, f"JSON path {path!r}: no key {part!r} at {here} (keys: {keys})"
                )
            node = node[part]
        elif isinstance(node, list):
            if not (part.isascii() and part.isdigit() and int(part) < len(node)):
                raise ProtocolMismatch(
                    target,
                    f"JSON path {path!r}: {part!r} is not an index of the "
                    f"{len(node)}-element list at {here}",
                )
            node = node[int(part)]
        else:
            raise ProtocolMismatch(
                target, f"JSON path {path!r}: {here} is {_kind(node)}, not an object or list"
            )
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        raise ProtocolMismatch(target, f"JSON path {path!r} is {_kind(node)}, not a number")
    return float(node)


async def read_json_numbers(fetch: Fetch, url: str, paths: Mapping[str, str]) -> dict[str, float]:
    """Several numbers from one ``GET url``.

    Args:
        fetch: the injected HTTP GET.
        url: the JSON endpoint.
        paths: value name → dotted path (``{"nats_mem_bytes": "mem"}``).

    Returns:
        value name → number.

    Raises:
        TargetUnreachable: no answer.
        ProtocolMismatch: not HTTP 200, not JSON, or a path leads to no number.
        UsageError: a path is malformed.
    """
    target = public_url(url)
    body = await fetch_text(fetch, url)
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ProtocolMismatch(target, f"not JSON: {exc} (body {body[:80]!r})") from exc
    return {name: extract_number(document, path, target=target) for name, path in paths.items()}


async def read_json_number(fetch: Fetch, url: str, path: str) -> float:
    """The number at dotted ``path`` in the JSON at ``url`` (see :func:`read_json_numbers`)."""
    return (await read_json_numbers(fetch, url, {path: path}))[path]


def json_source(
    fetch: Fetch, url: str, paths: Mapping[str, str]
) -> Callable[[], Coroutine[Any, Any, dict[str, float]]]:
    """A :class:`~harness.probes.sampler.Sampler` source reading ``paths`` from ``url``."""
    frozen = dict(paths)

    async def source() -> dict[str, float]:
        return await read_json_numbers(fetch, url, frozen)

    return source


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}"
