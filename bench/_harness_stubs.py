"""What the benchmark scripts share: they drive the harness without its HTTP side."""

from __future__ import annotations

from typing import Any

from harness.transport.base import HttpResponse


class NoHttp:
    """An HTTP client for workloads that make no HTTP requests (every call answers 404)."""

    async def request(self, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponse(404, "")

    async def abandon(self, *args: Any, **kwargs: Any) -> bool:
        return False

    async def aclose(self) -> None:
        pass
