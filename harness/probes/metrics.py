"""Read named metrics from a Prometheus text exposition (``/metrics``).

The HTTP client is injected (:data:`Fetch`), so this module never imports one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.parser import text_string_to_metric_families

from harness.errors import ProtocolMismatch, TargetUnreachable

__all__ = ["Fetch", "fetch_text", "prometheus_source", "public_url", "scrape_prometheus"]

Fetch = Callable[[str], Awaitable[tuple[int, str]]]
"""``await fetch(url)`` → ``(HTTP status, body text)``; raises ``OSError`` or
``TimeoutError`` when no answer came."""


def public_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and reports."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


async def fetch_text(fetch: Fetch, url: str) -> str:
    """The body of a ``200`` answer to ``GET url``.

    Raises:
        TargetUnreachable: ``fetch`` raised ``OSError`` or ``TimeoutError``.
        ProtocolMismatch: the status was not 200.
    """
    try:
        status, body = await fetch(url)
    except (OSError, TimeoutError) as exc:
        reason = f"GET failed: {type(exc).__name__}: {exc}"
        raise TargetUnreachable(public_url(url), reason) from exc
    if status != 200:
        raise ProtocolMismatch(public_url(url), f"GET answered HTTP {status}, expected 200")
    return body


async def scrape_prometheus(fetch: Fetch, url: str, names: Sequence[str]) -> dict[str, float]:
    """The named metrics from the exposition at ``url``, each summed across labels.

    A name matches samples of exactly that name; failing that, ``name_total``
    (a counter ``x`` is exposed as ``x_total``). A metric family that is
    declared but has no samples yet (a labelled counter never incremented)
    reads as ``0.0``.

    Args:
        fetch: the injected HTTP GET.
        url: the exposition's URL.
        names: the metrics wanted.

    Returns:
        name → the sum of its samples' values.

    Raises:
        TargetUnreachable: no answer.
        ProtocolMismatch: not HTTP 200, not Prometheus text, or a name is absent.
    """
    target = public_url(url)
    body = await fetch_text(fetch, url)
    sums: dict[str, float] = {}
    families: set[str] = set()
    empty: set[str] = set()  # declared families without samples yet
    try:
        for family in text_string_to_metric_families(body):
            families.add(family.name)
            if not family.samples:
                empty.add(family.name)
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ProtocolMismatch(
            target, f"not Prometheus text exposition: {exc} (body {body[:80]!r})"
        ) from exc
    out: dict[str, float] = {}
    missing: list[str] = []
    for name in names:
        bare = name.removesuffix("_total")
        if name in sums:
            out[name] = sums[name]
        elif f"{name}_total" in sums:
            out[name] = sums[f"{name}_total"]
        elif empty & {name, bare, f"{name}_total"}:
            out[name] = 0.0
        else:
            missing.append(name)
    if missing:
        known = ", ".join(sorted(families)[:10]) or "none"
        raise ProtocolMismatch(
            target,
            f"no metric {', '.join(map(repr, missing))} in the exposition "
            f"(metric families seen: {known})",
        )
    return out


def prometheus_source(
    fetch: Fetch, url: str, names: Sequence[str]
) -> Callable[[], Coroutine[Any, Any, dict[str, float]]]:
    """A :class:`~harness.probes.sampler.Sampler` source scraping ``names`` from ``url``."""
    frozen = tuple(names)

    async def source() -> dict[str, float]:
        return await scrape_prometheus(fetch, url, frozen)

    return source
