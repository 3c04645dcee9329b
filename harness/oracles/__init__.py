"""Oracles: pure decisions over recorded data, returning findings.

No I/O and no pytest: the CLI, the pytest plugin and the soak loop share them.
Each oracle takes plain records (frozen dataclasses) and returns a decision or
a list of findings; the caller turns those into violations.
"""
