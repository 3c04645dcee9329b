"""A flaky network between users and the service: every connection cut, again and again.

Catches registries that mix up whose socket is whose when everyone reconnects
at once. The cuts are network faults: they are counted as errors, never as
violations, and runs they cut short are not lost events.
"""

import pytest


@pytest.mark.conditions("reconnects", "overlapping_runs")
def test_a_reconnect_storm_keeps_users_apart(harness):
    users = harness.users()
    harness.reconnect_storm(users, reset_every_s=0.5)
    harness.verify()
