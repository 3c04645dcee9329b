"""A sustained mixed load: churn, simultaneous reads and cross-user probes together.

Sized by ``--duration`` and ``--rate``: seconds in CI, hours in a soak.
"""

import pytest


@pytest.mark.conditions(
    "overlapping_runs", "disconnects_mid_run", "reconnects", "same_path_concurrent_reads"
)
def test_sustained_mixed_load_keeps_users_apart(harness):
    users = harness.users()
    harness.mixed_load(users)
    harness.verify()
