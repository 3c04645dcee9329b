"""Is the target usable at all? Checked once, before any scenario (exit code 3 if not).

Distinguishes "the target is down, refuses us, or does not speak AEP/1" from
isolation findings: a run against an unusable target is an ``error``, never a
``pass`` and never a ``fail``.
"""

from __future__ import annotations

import asyncio

from harness.aep import PING, Event, Pong, parse_frame, user_message
from harness.errors import ProtocolMismatch, TargetError
from harness.transport.base import ChannelClosed, Connector, HttpClient


async def preflight(
    *,
    base_url: str,
    ws_url: str,
    connector: Connector,
    http: HttpClient,
    token: str,
    token_in_query: bool = False,
    timeout_s: float = 20.0,
) -> None:
    """Check ``/healthz``, the WebSocket handshake, ``ping`` and one run's start.

    Raises:
        TargetUnreachable: nothing answers at ``base_url``.
        AuthRefused: the handshake refused the harness's token.
        ProtocolMismatch: something answered, but not as AEP/1 says.
    """
    resp = await http.request("GET", base_url + "/healthz", timeout_s=timeout_s)
    if resp.status != 200:
        raise ProtocolMismatch(base_url, f"GET /healthz answered {resp.status}, expected 200 ok")
    channel = await connector.connect(ws_url, token=token, token_in_query=token_in_query)
    try:
        async with asyncio.timeout(timeout_s):
            await channel.send(PING)
            while True:
                text, binary = await channel.recv()
                if isinstance(parse_frame(text, binary=binary), Pong):
                    break
            await channel.send(
                user_message(message_id="preflight-1", thread_id="preflight", content="preflight")
            )
            while True:
                text, binary = await channel.recv()
                frame = parse_frame(text, binary=binary)
                if isinstance(frame, Event) and frame.message_id == "preflight-1":
                    break
    except TimeoutError:
        raise ProtocolMismatch(
            ws_url, f"no pong or agent_started within {timeout_s:g}s of a ping and a user_message"
        ) from None
    except ChannelClosed as exc:
        raise TargetError(ws_url, f"the WebSocket was closed during the preflight ({exc})") from exc
    finally:
        await channel.close()
