"""Findings: what an oracle reports, with the witness a person needs to act."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.types import ScenarioId, UserKey, ViolationKind


@dataclass(frozen=True, slots=True)
class Finding:
    """One isolation violation.

    Attributes:
        kind: what was broken.
        scenario: the scenario (pytest node id) that saw it.
        victim: the user who received or read what was not theirs (or whose
            run was incomplete, for lifecycle kinds).
        owner: the user it belonged to, when known.
        crosses_tenant: whether victim and owner are in different tenants
            (``None`` when there is no owner).
        detail: one line saying what happened.
        evidence: the witness: raw frame, connection, times, seed, field …
    """

    kind: ViolationKind
    scenario: ScenarioId
    victim: UserKey | None
    owner: UserKey | None
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def crosses_tenant(self) -> bool | None:
        if self.victim is None or self.owner is None:
            return None
        return self.victim.tenant != self.owner.tenant

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` form (schema ``isoharness.summary/1``)."""
        return {
            "kind": str(self.kind),
            "scenario": self.scenario,
            "victim": None if self.victim is None else str(self.victim),
            "owner": None if self.owner is None else str(self.owner),
            "crosses_tenant": self.crosses_tenant,
            "detail": self.detail,
            "evidence": dict(self.evidence),
        }

    def witness_lines(self, *, raw_limit: int = 300) -> list[str]:
        """The finding as a few lines: what, the raw frame or body, when, the seed."""
        lines = [str(self)]
        ev = self.evidence
        raw = ev.get("raw") or ev.get("last_raw")
        if isinstance(raw, str) and raw:
            lines.append(f"    witness: {raw if len(raw) <= raw_limit else raw[:raw_limit] + '…'}")
        when = ev.get("received_at") or ev.get("sent_at")
        facts = [f"received {when}" if when else "", f"seed {ev['seed']}" if "seed" in ev else ""]
        if any(facts):
            lines.append("    " + " · ".join(f for f in facts if f))
        return lines

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"
