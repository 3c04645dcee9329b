"""Adapters: how the harness speaks a target's protocol.

An adapter is what a protocol must provide for the harness to test it:

* **connect as a user** — :meth:`Adapter.open` returns an open
  :class:`~harness.transport.base.Channel` authenticated as that user
  (however the protocol carries credentials: a header, a query parameter,
  a subprotocol, a first message, a NATS CONNECT);
* **send a message that carries the canaries** and **turn received frames
  into recorded events** — its :attr:`Adapter.codec`
  (:class:`~harness.codec.Codec`), with whatever owner attribution the
  protocol has (none at all is fine: canaries alone then decide);
* **optional state probes** — ``"http_state"`` in :attr:`Adapter.capabilities`
  when the target has AEP/1's ``/api/state`` and ``/api/threads`` (the
  cross-user read scenarios need them; without it they are skipped);
* **optional metrics** — :meth:`Adapter.memory_probe`, a JSON endpoint and
  path for the target's memory when it has one (NATS ``/varz`` ``mem``).

AEP/1 (:mod:`harness.adapters.aep`) is one adapter among others; see the
README's "Testing your own service" for the declarative JSON adapter and a
worked example of a Python one.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from harness.codec import Codec
from harness.transport.base import Channel
from harness.users import SimUser

CAPABILITIES = ("http_state", "ping", "bad_frames")
"""What an adapter may offer beyond connecting, sending and decoding.

* ``http_state``: AEP/1's ``/healthz``, ``/api/state`` and ``/api/threads`` at
  the base URL; without it the scenarios that read state are skipped.
* ``ping``: the AEP/1 ``ping``/``pong`` exchange, used by the preflight.
* ``bad_frames``: AEP/1 §3's answer to a bad frame (an ``error`` frame, the
  connection kept open), so users may send AEP/1 frames the target must refuse
  (:func:`harness.aep.bad_frame`); without it they send none.
"""


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What every adapter factory is given: the target and the harness's settings.

    Attributes:
        base_url: the target's ``http(s)://`` base URL (from ``target_url``).
        ws_url: the target's ``ws(s)://`` URL of ``/ws`` (from ``target_url``).
        ssl_context: TLS settings for ``https``/``wss`` targets, ``None`` for plain ones.
        transport: the WebSocket client to use: ``websockets`` or ``fast``.
        token_in_query: carry tokens in the URL instead of a header (browsers' way).
        options: the adapter's own table from the config file (``[adapter]`` in
            ``isoharness.toml``, ``[tool.isoharness.adapter]`` in ``pyproject.toml``);
            empty when there is none.
        options_source: where ``options`` came from, for error messages
            (``isoharness.toml [adapter]``): ``ConfigError(key, value, options_source, fix)``.
    """

    base_url: str
    ws_url: str
    ssl_context: ssl.SSLContext | None = None
    transport: Literal["websockets", "fast"] = "websockets"
    token_in_query: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    options_source: str = "the adapter options"


@dataclass(frozen=True, slots=True)
class JsonMemoryProbe:
    """Where a target reports its own memory as JSON (``url`` and a dotted ``path``).

    ``gauges``: other numbers at the same URL, ``(name, dotted path)`` pairs
    (NATS ``/varz`` ``connections``), sampled with the memory and judged for
    ``resource_leak``: back at their idle value once every user has left.
    """

    url: str
    path: str
    gauges: tuple[tuple[str, str], ...] = ()


class Adapter(Protocol):
    """A protocol the harness can test (see the module docstring).

    An adapter is made by its :data:`AdapterFactory` once per event loop (each
    scenario step runs its own loop) and once, never opened, to read its
    name, codec and capabilities: constructing one must not do I/O or hold
    resources; :meth:`open` does the work and :meth:`aclose` ends it, in the
    same loop.

    Attributes (read-only: plain attributes, dataclass fields and properties all do):
        name: short name for reports (``aep``, ``json``, ``nats``).
        codec: encodes sent messages, decodes received frames.
        capabilities: a subset of :data:`CAPABILITIES`.
    """

    @property
    def name(self) -> str: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    async def open(self, user: SimUser) -> Channel:
        """Open a connection authenticated as ``user``.

        Raises:
            AuthRefused: the target refused the user's credentials.
            TargetUnreachable: no connection could be made.
            TargetError: anything else went wrong opening it.
        """
        ...

    def memory_probe(self) -> JsonMemoryProbe | None:
        """The target's own memory figure as JSON, if the protocol has one."""
        ...

    async def aclose(self) -> None:
        """Release what the adapter acquired in this event loop (shared clients …).

        Called once at the end of every event loop the adapter was made for,
        after its connections are closed.
        """
        ...


AdapterFactory = Callable[[AdapterContext], Adapter]
"""Builds an adapter from the context; raises ``ConfigError`` for bad ``options``.

The ``adapter`` setting names one: ``aep``, ``json``, ``nats`` (the built-in
``create`` functions of :mod:`harness.adapters.aep`, ``harness.adapters.json_ws``
and ``harness.adapters.nats``) or ``package.module:factory`` for your own.
"""
