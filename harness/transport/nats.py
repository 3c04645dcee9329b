"""A :class:`~harness.transport.base.Channel` over a NATS connection (``nats-py``).

NATS is a broker, not a request/response service: a channel here is one NATS
client connection, authenticated as one user (user name and password in the
CONNECT), holding one subscription. Every message that subscription delivers
becomes one received frame, a compact JSON object::

    {"subject": "u0.t1", "sub": "u0.>", "data": "<the payload as text>"}

so the canary scan sees the subject and the payload, and the witness of a
leak shows which subscription let it in. ``send(text)`` publishes ``text`` on
the subject the channel's ``route`` picks for it.

**Permissions.** The subscription is the widest the server accepts: the
patterns are tried in order (widest first) and each is confirmed with a
round trip (``SUB`` then ``PING``: the server answers a refused ``SUB`` with
``-ERR 'Permissions Violation …'`` before the ``PONG``), so the channel ends
with the first accepted pattern in :attr:`NatsChannel.subscription`. On a
correctly configured server the wide attempts are refused; that is expected
and is not an error. Publishes outside the user's subjects are tried
the same way, each with its answer in :attr:`NatsChannel.outside_attempts`
(the harness reports one the server let through). A refused publish of the
user's own message after that is a target fault: it arrives as a
``{"error": …}`` frame.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from harness.errors import AuthRefused, TargetError, TargetUnreachable
from harness.transport.base import ChannelClosed, OutsideAttempt
from harness.types import UserKey

__all__ = ["NatsChannel", "open_nats_channel"]

DRAIN_TIMEOUT_S = 1.0
"""How long closing waits for the server to take back the subscription and buffered frames."""

_Closing = tuple[Literal["client", "server", "error"], str]
OutsidePublish = tuple[str, str, UserKey | None]
"""``(subject, text, owner)``: a publish the server should refuse, and whose subject it is."""


def _public(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else url


class NatsChannel:
    """One NATS connection as a channel (made by :func:`open_nats_channel`).

    Attributes:
        subscription: the subscription pattern the server accepted.
        outside_attempts: every outside publish tried, with the server's answer.
    """

    def __init__(self, client: Client, *, url: str, route: Callable[[str], str]) -> None:
        self._client = client
        self._url = url
        self._route = route
        self._queue: asyncio.Queue[str | _Closing] = asyncio.Queue()
        self._closed: _Closing | None = None
        self._ended = asyncio.Event()
        self._violations: list[str] = []
        self._setting_up = True
        self.subscription: str | None = None
        self.outside_attempts: list[OutsideAttempt] = []

    # -- callbacks from nats-py ------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        text = str(exc)
        if self._setting_up:
            self._violations.append(text)
        elif "permissions violation" in text.lower():
            # A refused publish of the user's own message: the target's fault.
            self._queue.put_nowait(orjson.dumps({"error": text.removeprefix("nats: ")}).decode())

    async def _on_closed(self) -> None:
        self._end("server", "the NATS connection was closed")

    async def _on_disconnected(self) -> None:
        self._end("error", "the NATS connection was lost")

    def _end(self, initiator: Literal["client", "server", "error"], reason: str) -> None:
        if self._closed is None:
            self._closed = (initiator, reason)
            self._ended.set()
            self._queue.put_nowait(self._closed)

    def _deliverer(self, pattern: str) -> Callable[[Msg], Any]:
        queue = self._queue

        async def deliver(msg: Msg) -> None:
            frame = {
                "subject": msg.subject,
                "sub": pattern,
                "data": msg.data.decode("utf-8", "replace"),
            }
            queue.put_nowait(orjson.dumps(frame).decode())

        return deliver

    # -- setup -----------------------------------------------------------------------------------

    async def _refused(self, before: int, what: str, timeout_s: float) -> str | None:
        """The refusal of ``what`` among violations seen after a round trip, if any."""
        # Twice: nats-py writes a flush's PING at once but leaves SUB/PUB to its
        # flusher task, so the first PONG may answer before the server saw them;
        # the second PING is written after them, and the server answers in order.
        await self._round_trip(timeout_s)
        await self._round_trip(timeout_s)
        needle = f'to "{what}"'
        for text in self._violations[before:]:
            if needle in text:
                return text
        return None

    async def _round_trip(self, timeout_s: float) -> None:
        """A flush, cut short when the connection ends (nats-py would wait out its timeout)."""
        flush = asyncio.ensure_future(self._client.flush(timeout=max(1, int(timeout_s))))
        ended = asyncio.ensure_future(self._ended.wait())
        await asyncio.wait((flush, ended), return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        if not flush.done():
            flush.cancel()
            assert self._closed is not None
            raise ConnectionError(self._closed[1])
        flush.result()

    async def _subscribe_widest(self, patterns: Sequence[str], timeout_s: float) -> None:
        for pattern in patterns:
            before = len(self._violations)
            sub = await self._client.subscribe(pattern, cb=self._deliverer(pattern))
            refusal = await self._refused(before, pattern, timeout_s)
            if refusal is None:
                self.subscription = pattern
                return
            await sub.unsubscribe()
        raise AuthRefused(
            _public(self._url),
            f"NATS refused every subscription tried ({', '.join(map(repr, patterns))}): "
            "the user must be allowed to subscribe to at least its own subjects",
        )

    async def _publish_outside(self, attempts: Sequence[OutsidePublish], timeout_s: float) -> None:
        for subject, text, owner in attempts:
            before = len(self._violations)
            await self._client.publish(subject, text.encode())
            refusal = await self._refused(before, subject, timeout_s)
            self.outside_attempts.append(
                OutsideAttempt(subject, owner, accepted=refusal is None, answer=refusal or "")
            )

    # -- Channel ---------------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise ChannelClosed(None, self._closed[1], self._closed[0])
        try:
            await self._client.publish(self._route(text), text.encode())
        except NatsError as exc:
            raise ChannelClosed(None, f"publish failed: {exc}", "error") from exc

    async def recv(self) -> tuple[str, bool]:
        if self._closed is not None and self._queue.empty():
            raise ChannelClosed(None, self._closed[1], self._closed[0])
        item = await self._queue.get()
        if isinstance(item, tuple):
            raise ChannelClosed(None, item[1], item[0])
        return item, False

    async def close(self) -> None:
        self._end("client", "closed")
        if not self._client.is_closed:
            # drain(): unsubscribe, deliver what is buffered, flush, close.
            try:
                # Bounded: through a proxy that cut it unnoticed, a drain would
                # wait out nats-py's own drain timeout.
                await asyncio.wait_for(self._client.drain(), DRAIN_TIMEOUT_S)
            except (TimeoutError, NatsError):
                await self._client.close()

    async def abort(self) -> None:
        # nats-py has no abrupt close; closing without draining is the nearest.
        self._end("client", "aborted")
        await self._client.close()


async def open_nats_channel(
    url: str,
    *,
    user: str,
    password: str,
    subscribe: Sequence[str],
    route: Callable[[str], str],
    publish_outside: Sequence[OutsidePublish] = (),
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
) -> NatsChannel:
    """Connect to ``url`` as ``user`` and subscribe as widely as the server allows.

    Args:
        url: the server, ``ws://``/``wss://`` (its WebSocket listener) or ``nats://``.
        user: the NATS user name.
        password: its password (the simulated user's token).
        subscribe: subscription patterns, widest first; the first accepted is kept.
        route: the subject to publish a sent text on.
        publish_outside: ``(subject, text, owner)`` publishes the server should refuse
            (``owner``: the user whose subject it is, if it is one user's).
        ssl_context: TLS settings for ``wss://``/``tls://``.
        timeout_s: connect and round-trip timeout.

    Raises:
        AuthRefused: the server refused the user, or every subscription pattern.
        TargetUnreachable: no connection could be made.
        TargetError: anything else went wrong.
    """
    client = Client()
    channel = NatsChannel(client, url=url, route=route)
    target = _public(url)
    options: dict[str, Any] = {}
    if ssl_context is not None and urlsplit(url).scheme in ("wss", "tls"):
        options["tls"] = ssl_context
    # nats-py passes aiohttp a float WebSocket timeout, which aiohttp 3.10+ deprecates.
    # Re-inserted per connect: pytest replaces the filters for every test.
    warnings.filterwarnings(
        "ignore", message="parameter 'timeout' of type 'float'", category=DeprecationWarning
    )
    try:
        await client.connect(
            servers=[url],
            user=user,
            password=password,
            name=f"isoharness {user}",
            allow_reconnect=False,
            # 0 would mean "retry forever" in nats-py; 1 is two quick attempts.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=max(1, int(timeout_s)),
            error_cb=channel._on_error,
            closed_cb=channel._on_closed,
            disconnected_cb=channel._on_disconnected,
            **options,
        )
    except NatsError as exc:
        await _discard(client)
        if "authorization violation" in str(exc).lower():
            raise AuthRefused(target, f"NATS refused user {user!r}: {exc}") from exc
        last = channel._violations[-1] if channel._violations else str(exc) or type(exc).__name__
        raise TargetUnreachable(target, f"no NATS connection could be made: {last}") from exc
    except (TimeoutError, OSError) as exc:
        await _discard(client)
        raise TargetUnreachable(target, f"no NATS connection could be made: {exc!r}") from exc
    try:
        await channel._subscribe_widest(subscribe, timeout_s)
        await channel._publish_outside(publish_outside, timeout_s)
    except TargetError:
        await _discard(client)
        raise
    except (TimeoutError, NatsError, OSError) as exc:
        await _discard(client)
        raise TargetError(target, f"NATS setup for user {user!r} failed: {exc!r}") from exc
    channel._setting_up = False
    return channel


async def _discard(client: Client) -> None:
    try:
        await client.close()
    except Exception:  # noqa: BLE001, S110 - closing a connection that never opened
        pass
