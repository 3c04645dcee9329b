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

from dataclasses import dataclass
from typing import Protocol

from harness.codec import Codec
from harness.transport.base import Channel
from harness.users import SimUser

CAPABILITIES = ("http_state", "ping")
"""What an adapter may offer beyond connecting, sending and decoding."""


@dataclass(frozen=True, slots=True)
class JsonMemoryProbe:
    """Where a target reports its own memory as JSON (``url`` and a dotted ``path``)."""

    url: str
    path: str


class Adapter(Protocol):
    """A protocol the harness can test (see the module docstring).

    Attributes:
        name: short name for reports (``aep``, ``json``, ``nats``).
        codec: encodes sent messages, decodes received frames.
        capabilities: a subset of :data:`CAPABILITIES`.
    """

    name: str
    codec: Codec
    capabilities: frozenset[str]

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
        """Release what the adapter holds (shared clients, servers it started)."""
        ...
