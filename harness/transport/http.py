"""The real HTTP client, on aiohttp."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace
from typing import Any

import aiohttp

from harness.errors import TargetError, TargetUnreachable
from harness.transport.base import HttpResponse

MAX_BODY_BYTES = 1 << 20


class AiohttpClient:
    """An :class:`~harness.transport.base.HttpClient` sharing one connection pool.

    Create it inside the event loop that will use it; close it with
    :meth:`aclose`.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, limit: int = 256) -> None:
        connector = aiohttp.TCPConnector(limit=limit, ssl=ssl_context if ssl_context else True)
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_headers_sent)
        self._session = aiohttp.ClientSession(connector=connector, trace_configs=[tracing])

    async def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        timeout_s: float = 10.0,
    ) -> HttpResponse:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        target = url.split("?", 1)[0]
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                body = await resp.content.read(MAX_BODY_BYTES)
                return HttpResponse(resp.status, body.decode("utf-8", "replace"))
        except aiohttp.ClientConnectorError as exc:
            raise TargetUnreachable(target, f"cannot connect: {exc.os_error}") from exc
        except TimeoutError as exc:
            raise TargetError(target, f"{method} got no answer within {timeout_s}s") from exc
        except aiohttp.ClientError as exc:
            raise TargetError(target, f"{method} failed: {exc}") from exc

    async def abandon(self, method: str, url: str, *, token: str | None = None) -> bool:
        """Send a request and give up on it once it is on the wire, before the answer.

        Returns:
            ``True`` if the request was sent and cancelled before its answer
            arrived; ``False`` if the answer came first (or it never went out).
        """
        sent = asyncio.Event()
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        async def go() -> None:
            async with self._session.request(
                method, url, headers=headers, trace_request_ctx=SimpleNamespace(sent=sent)
            ) as resp:
                await resp.read()

        task = asyncio.create_task(go())
        waiter = asyncio.create_task(sent.wait())
        await asyncio.wait({task, waiter}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        abandoned = sent.is_set() and not task.done()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, aiohttp.ClientError, OSError):
            pass
        return abandoned

    async def aclose(self) -> None:
        await self._session.close()


async def _headers_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    sent = getattr(ctx.trace_request_ctx, "sent", None)
    if isinstance(sent, asyncio.Event):
        sent.set()
