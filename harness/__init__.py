"""isoharness: a multi-tenant isolation test harness.

What users may import is listed in ``__all__``; everything else may change.
Names are imported on first use, so ``import harness`` (and the pytest
plugin) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Adapter": "harness.adapters",
    "AdapterContext": "harness.adapters",
    "AuthRefused": "harness.errors",
    "CanaryBook": "harness.canary",
    "Codec": "harness.codec",
    "ConfigError": "harness.errors",
    "DeliveryPolicy": "harness.types",
    "EmbeddedService": "harness.embedded",
    "FaultProxy": "harness.faultproxy",
    "Faults": "harness.faultproxy",
    "Finding": "harness.findings",
    "HarnessError": "harness.errors",
    "HookCredentials": "harness.credentials",
    "Inconclusive": "harness.scenario",
    "IsolationViolation": "harness.errors",
    "JwtCredentials": "harness.credentials",
    "Lifecycle": "harness.codec",
    "NotApplicable": "harness.scenario",
    "ProtocolMismatch": "harness.errors",
    "Run": "harness.run",
    "Scenario": "harness.scenario",
    "Session": "harness.session",
    "Settings": "harness.settings",
    "Sizes": "harness.scenario",
    "StaticCredentials": "harness.credentials",
    "TargetError": "harness.errors",
    "TargetUnreachable": "harness.errors",
    "UsageError": "harness.errors",
    "UserKey": "harness.types",
    "Verdict": "harness.types",
    "ViolationKind": "harness.types",
    "decide_memory_growth": "harness.oracles.memory_growth",
    "render_report": "harness.reporting.html",
    "resolve_settings": "harness.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
