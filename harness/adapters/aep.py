"""The default adapter: AEP/1 over a WebSocket (``PROTOCOL.md``).

A bearer token per user, on the handshake's ``Authorization`` header or, with
``token_in_query``, as ``?token=`` (AEP/1 §1); frames are decoded by
:data:`~harness.aep.AEP_CODEC`. AEP/1 services have the HTTP state API,
``ping`` and an error frame for every bad frame, so every scenario applies.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.adapters import AdapterContext, AdapterFactory, JsonMemoryProbe
from harness.aep import AEP_CODEC, AepCodec
from harness.errors import ConfigError
from harness.transport.base import Channel, Connector
from harness.transport.fast import FastConnector
from harness.transport.websocket import WebSocketConnector
from harness.users import SimUser


class AepAdapter:
    """AEP/1 through ``connector`` to ``ws_url``.

    Args:
        connector: opens the WebSocket (``websockets`` or the fast client, or
            the in-memory twin in tests).
        ws_url: the target's ``/ws`` URL.
        token_in_query: send the token as ``?token=`` instead of a header.
    """

    name = "aep"
    codec: AepCodec = AEP_CODEC
    capabilities = frozenset({"http_state", "ping", "bad_frames"})

    def __init__(self, connector: Connector, ws_url: str, *, token_in_query: bool = False) -> None:
        self._connector = connector
        self._ws_url = ws_url
        self._token_in_query = token_in_query

    async def open(self, user: SimUser) -> Channel:
        return await self._connector.connect(
            self._ws_url, token=user.token, token_in_query=self._token_in_query
        )

    def memory_probe(self) -> JsonMemoryProbe | None:
        return None  # AEP/1 §5: memory is in /metrics, read by the Prometheus probe

    async def aclose(self) -> None:
        return None


def create(context: AdapterContext) -> AepAdapter:
    """The :data:`~harness.adapters.AdapterFactory` of ``adapter = "aep"``.

    AEP/1 needs no options: the target URL and the credentials settings say it all.

    Raises:
        ConfigError: the ``[adapter]`` table is not empty.
    """
    if context.options:
        key = next(iter(context.options))
        raise ConfigError(
            "adapter option",
            key,
            context.options_source,
            "the aep adapter takes no options; remove the table or choose another adapter",
        )
    connector: Connector
    if context.transport == "fast":
        connector = FastConnector(ssl_context=context.ssl_context)
    else:
        connector = WebSocketConnector(ssl_context=context.ssl_context)
    return AepAdapter(connector, context.ws_url, token_in_query=context.token_in_query)


def aep_via(connector: Callable[[], Connector]) -> AdapterFactory:
    """An AEP/1 adapter factory whose connections ``connector()`` opens.

    For a connector the settings cannot name: the in-memory twin, or one with
    its own timeouts (tests and benchmarks).
    """

    def create_via(context: AdapterContext) -> AepAdapter:
        return AepAdapter(connector(), context.ws_url, token_in_query=context.token_in_query)

    return create_via
