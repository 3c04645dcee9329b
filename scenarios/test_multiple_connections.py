"""Users keep several connections open at once, and each gets all of its user's events.

Catches connection registries that mix up whose socket is whose.
"""

import pytest


@pytest.mark.conditions("overlapping_runs")
@pytest.mark.parametrize("connections", [2, 3])
def test_every_connection_gets_only_its_own_users_events(harness, connections):
    users = harness.users()
    harness.chat(users, connections=connections)
    harness.verify()
