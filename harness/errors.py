"""Every exception isoharness raises, in one place.

::

    Exception
    ├── HarnessError          our own failure (a bug or a broken environment)
    │   ├── TargetError       the target misbehaved: unreachable, refused, not AEP/1
    │   │   ├── TargetUnreachable
    │   │   ├── AuthRefused
    │   │   └── ProtocolMismatch
    │   ├── ConfigError       bad configuration value (names key, value, source, fix)
    │   └── UsageError        the API or CLI used wrongly (says how to use it)
    └── AssertionError
        └── IsolationViolation  findings: the target broke isolation

Messages state what happened with the offending value and, for misuse, the
fix. ``__str__`` is built from structured fields so tests can assert exact
messages and reports can show the fields separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HarnessError(Exception):
    """A failure of the harness itself, or of its environment."""


class TargetError(HarnessError):
    """The target could not be used: exit code 3.

    Attributes:
        target: the base URL (never with credentials).
        reason: what went wrong, one line.
    """

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(target, reason)

    def __str__(self) -> str:
        return f"target {self.target} is unusable: {self.reason}"


class TargetUnreachable(TargetError):
    """No connection could be made to the target."""


class AuthRefused(TargetError):
    """The target refused the harness's credentials."""


class ProtocolMismatch(TargetError):
    """The target answered, but not as the protocol says it must."""


class ConfigError(HarnessError):
    """An invalid configuration value: exit code 2.

    Attributes:
        key: the setting's name (``users``, ``delivery_policy`` …).
        value: the offending value as given (never a secret).
        source: where it came from (``isoharness.toml``, ``--users``, ``$ISOHARNESS_USERS``);
            ``""`` with ``value`` ``None``: a setting needed and set nowhere.
        allowed: what would have been accepted.
    """

    def __init__(self, key: str, value: Any, source: str, allowed: str) -> None:
        self.key = key
        self.value = value
        self.source = source
        self.allowed = allowed
        super().__init__(key, value, source, allowed)

    def __str__(self) -> str:
        if self.value is None and not self.source:  # set nowhere, and needed
            return f"missing {self.key}: {self.allowed}"
        return f"invalid {self.key} {self.value!r} from {self.source}: {self.allowed}"


class UsageError(HarnessError):
    """The harness was used wrongly; the message says how to use it (exit 2)."""


class IsolationViolation(AssertionError):
    """Raised by a scenario when oracles found violations.

    Attributes:
        findings: the violations, each with its witness.
    """

    __tracebackhide__ = True

    def __init__(self, findings: Sequence[Any]) -> None:
        self.findings = tuple(findings)
        super().__init__(self.findings)

    def __str__(self) -> str:
        lines = [f"{len(self.findings)} isolation violation(s):"]
        for index, finding in enumerate(self.findings[:20]):
            witness = getattr(finding, "witness_lines", None)
            if index < 5 and callable(witness):
                first, *rest = witness()
                lines += [f"  - {first}", *rest]
            else:
                lines.append(f"  - {finding}")
        if len(self.findings) > 20:
            lines.append(f"  … and {len(self.findings) - 20} more (see the report)")
        return "\n".join(lines)
