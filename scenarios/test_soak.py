"""The soak: hours of session churn, checking isolation all along and memory at the end.

Deselected by default; ``isoharness soak --duration 8h`` (or ``pytest scenarios
-m soak --duration 8h``) runs it. Between cycles of mixed load every user has
left: the target's memory is sampled there, and at the end the harness decides
whether it grows with the sessions served and whether its gauges came back.
"""

import pytest


@pytest.mark.soak
@pytest.mark.conditions(
    "overlapping_runs", "disconnects_mid_run", "reconnects", "same_path_concurrent_reads"
)
def test_soak_keeps_users_apart_and_memory_flat(harness):
    users = harness.users()
    harness.soak(users)
    harness.verify_resources()
    harness.verify()
