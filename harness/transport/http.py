"""The real HTTP client, on aiohttp."""

from __future__ import annotations

import ssl
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
        self._session = aiohttp.ClientSession(connector=connector)

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

    async def aclose(self) -> None:
        await self._session.close()
