"""Is the target usable at all? Checked once, before any scenario (exit code 3 if not).

Distinguishes "the target is down, refuses us, or does not speak its protocol"
from isolation findings: a run against an unusable target is an ``error``,
never a ``pass`` and never a ``fail``.
"""

from __future__ import annotations

import asyncio

from harness.adapters import Adapter
from harness.aep import CLOSE_UNAUTHORIZED, PING, Event, Pong
from harness.errors import AuthRefused, ProtocolMismatch, TargetError, TargetUnreachable
from harness.transport.base import ChannelClosed, HttpClient
from harness.users import SimUser

MESSAGE_ID = "preflight-1"


async def preflight(
    *,
    adapter: Adapter,
    user: SimUser,
    http: HttpClient,
    base_url: str,
    ws_url: str,
    timeout_s: float = 20.0,
) -> None:
    """Check that ``user`` can connect and that one message starts a run.

    With ``"http_state"`` (AEP/1) ``/healthz`` must answer 200 first; with
    ``"ping"`` a ``ping`` must get its ``pong`` before the message is sent.
    Any adapter: the connection must open and the message must get a first
    event of its run within ``timeout_s``.

    Raises:
        TargetUnreachable: nothing answers at the target.
        AuthRefused: the target refused the user's credentials (at the handshake,
            or by closing the accepted connection with 4401).
        ProtocolMismatch: something answered, but not as the protocol says.
    """
    capabilities = adapter.capabilities
    if "http_state" in capabilities:
        resp = await http.request("GET", base_url + "/healthz", timeout_s=timeout_s)
        if resp.status != 200:
            raise ProtocolMismatch(
                base_url, f"GET /healthz answered {resp.status}, expected 200 ok"
            )
    codec = adapter.codec
    try:
        async with asyncio.timeout(timeout_s):
            channel = await adapter.open(user)
    except TimeoutError:
        raise TargetUnreachable(ws_url, f"no connection within {timeout_s:g}s") from None
    pings = "ping" in capabilities
    try:
        async with asyncio.timeout(timeout_s):
            if pings:
                await channel.send(PING)
                while True:
                    text, binary = await channel.recv()
                    if isinstance(codec.decode(text, binary=binary), Pong):
                        break
            await channel.send(
                codec.encode_message(
                    message_id=MESSAGE_ID, thread_id="preflight", content="preflight"
                )
            )
            while True:
                text, binary = await channel.recv()
                frame = codec.decode(text, binary=binary)
                if isinstance(frame, Event) and frame.message_id == MESSAGE_ID:
                    break
    except TimeoutError:
        if pings:
            what = f"no pong or {codec.lifecycle.events[0]} within {timeout_s:g}s"
            raise ProtocolMismatch(ws_url, f"{what} of a ping and a user_message") from None
        raise ProtocolMismatch(
            ws_url,
            f"no {codec.lifecycle.events[0]} event within {timeout_s:g}s of a message "
            f"(does the target speak what the {adapter.name} adapter expects?)",
        ) from None
    except ChannelClosed as exc:
        if exc.initiator == "server" and exc.code == CLOSE_UNAUTHORIZED:
            raise AuthRefused(
                ws_url,
                f"the WebSocket was accepted, then closed with {exc.code} (unauthorized): "
                "check the credentials the harness mints or reads",
            ) from exc
        raise TargetError(
            ws_url, f"the connection was closed during the preflight ({exc})"
        ) from exc
    finally:
        await channel.close()
