"""The transport interface: a message channel, a way to open one, an HTTP client."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from harness.errors import HarnessError
from harness.types import UserKey


class ChannelClosed(HarnessError):
    """The channel is closed; ``initiator`` says who closed it.

    Attributes:
        code: the WebSocket close code, if there was a close frame.
        reason: the close reason, or what broke the connection.
        initiator: ``client`` (we closed it), ``server`` (a close frame from
            the target) or ``error`` (reset, protocol error, no close frame).
    """

    def __init__(
        self, code: int | None, reason: str, initiator: Literal["client", "server", "error"]
    ) -> None:
        self.code = code
        self.reason = reason
        self.initiator: Literal["client", "server", "error"] = initiator
        super().__init__(code, reason, initiator)

    def __str__(self) -> str:
        return f"connection closed by {self.initiator} (code {self.code}): {self.reason}"


@dataclass(frozen=True, slots=True)
class OutsideAttempt:
    """A write a channel tried, as it opened, where its user's messages must not go.

    A channel that makes such attempts (NATS: ``publish_outside``) lists them
    in an ``outside_attempts`` attribute; the harness records each one
    (:class:`~harness.recording.OutsideWrite`) and reports an accepted one.

    Attributes:
        target: where it was sent (a NATS subject).
        owner: the user the place belongs to, when it is one user's.
        accepted: the target did not refuse it.
        answer: the target's refusal, word for word (``""`` when accepted).
    """

    target: str
    owner: UserKey | None
    accepted: bool
    answer: str = ""


class Channel(Protocol):
    """One open message connection (a WebSocket)."""

    async def send(self, text: str) -> None:
        """Send one text frame; raises :class:`ChannelClosed` if closed."""

    async def recv(self) -> tuple[str, bool]:
        """The next frame as ``(text, binary)``; raises :class:`ChannelClosed` at the end.

        Binary frames are returned decoded as UTF-8 with replacement, flagged
        ``binary=True``, so the recorder can keep them as text.
        """
        ...

    async def close(self) -> None:
        """Close with a close handshake (code 1000)."""

    async def abort(self) -> None:
        """Drop the connection at once, as a killed browser tab does."""


class Connector(Protocol):
    """Opens channels to the target."""

    async def connect(
        self,
        url: str,
        *,
        token: str | None,
        token_in_query: bool = False,
        query_param: str = "token",
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] = (),
    ) -> Channel:
        """Open a channel authenticated by ``token``.

        Args:
            url: the ``ws://``/``wss://`` URL.
            token: sent as ``Authorization: Bearer <token>``, or as the query
                parameter ``query_param`` when ``token_in_query``; ``None``
                sends no credential (the caller carries it in ``headers``,
                ``subprotocols`` or a first message).
            headers: further handshake headers.
            subprotocols: offered in ``Sec-WebSocket-Protocol``, in order.

        Raises:
            AuthRefused: the handshake was refused with 401/403.
            TargetUnreachable: no connection could be made.
            TargetError: the handshake failed otherwise.
        """
        ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    text: str


class HttpClient(Protocol):
    """Makes HTTP requests to the target."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        timeout_s: float = 10.0,
    ) -> HttpResponse:
        """Send one request; raises ``TargetUnreachable``/``TargetError`` on failure."""
        ...

    async def abandon(self, method: str, url: str, *, token: str | None = None) -> bool:
        """Send a request and cancel it once sent, before its answer; ``True`` if so."""
        ...

    async def aclose(self) -> None: ...


def place_token(
    url: str,
    token: str | None,
    *,
    in_query: bool,
    query_param: str,
    headers: Mapping[str, str] | None,
) -> tuple[str, dict[str, str]]:
    """The URL and handshake headers that carry ``token``, as :meth:`Connector.connect` says.

    ``Authorization: Bearer <token>`` unless ``in_query``, then ``?<query_param>=<token>``;
    no token, no credential. ``headers`` are sent as given.
    """
    sent = dict(headers or {})
    if token is not None and in_query:
        url = add_query(url, query_param, token)
    elif token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return url, sent


def add_query(url: str, name: str, value: str) -> str:
    """``url`` with the query parameter ``name=value`` appended (both percent-encoded)."""
    return f"{url}{'&' if '?' in url else '?'}{quote(name, safe='')}={quote(value, safe='')}"


def make_ssl_context(*, ca_bundle: Path | None, insecure: bool) -> ssl.SSLContext:
    """TLS settings for https/wss targets: verification on unless ``insecure``."""
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
