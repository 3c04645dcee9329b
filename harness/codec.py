"""What a protocol's frames mean to the oracles: the codec half of an adapter.

An adapter (:mod:`harness.adapters`) is a codec plus a way to connect. The
codec is pure (no I/O): it builds the text of a canary-carrying message and
classifies every received frame into the frame types of :mod:`harness.aep`
(:class:`~harness.aep.Event`, :class:`~harness.aep.Pong`,
:class:`~harness.aep.ErrorFrame`, :class:`~harness.aep.Malformed`), with
whatever attribution the protocol has. A protocol with no owner tags gives
events whose ``user_id``/``tenant_id`` are ``None``; the oracles then decide
on canaries alone. A protocol with no sequence numbers gives ``seq=None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # Only for annotations: harness.aep builds its codec from Lifecycle.
    from harness.aep import Frame


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The events one sent message causes, in order.

    Attributes:
        events: the event types of one run, in the order they must arrive.
        repeatable: those a run may send more than once.
        terminal: the event that ends a run (the last of ``events``).
    """

    events: tuple[str, ...]
    repeatable: frozenset[str] = frozenset()
    phase: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.events:
            raise ValueError("a lifecycle needs at least one event type")
        if len(set(self.events)) != len(self.events):
            raise ValueError(f"a lifecycle's event types must be distinct: {self.events!r}")
        object.__setattr__(self, "phase", {name: i for i, name in enumerate(self.events)})

    @property
    def terminal(self) -> str:
        return self.events[-1]

    @property
    def singular(self) -> tuple[str, ...]:
        """Event types a run sends exactly once."""
        return tuple(name for name in self.events if name not in self.repeatable)


class Codec(Protocol):
    """Encodes what users send and decodes what they receive. Never raises.

    Attributes (read-only: plain attributes, dataclass fields and properties all do):
        name: the protocol's short name (``aep``, ``json``, ``nats``), shown in reports.
        lifecycle: the events of one run.
        owner_tags: whether decoded events carry ``user_id``/``tenant_id``.
    """

    @property
    def name(self) -> str: ...

    @property
    def lifecycle(self) -> Lifecycle: ...

    @property
    def owner_tags(self) -> bool: ...

    def encode_message(self, *, message_id: str, thread_id: str, content: str) -> str:
        """The text of one user message; ``message_id`` and ``content`` carry the canary."""
        ...

    def decode(self, raw: str, *, binary: bool = False) -> Frame:
        """Classify one received frame; anything unexpected is ``Malformed`` with a reason.

        A codec may also offer ``decode_batch(frames)``: the same for every
        ``(raw, binary)`` frame of one read, returning the frames and whether
        every one is an :class:`~harness.aep.Event` (one call per read instead
        of one per frame; :func:`harness.aep.decode_batch` is AEP/1's).
        """
        ...
