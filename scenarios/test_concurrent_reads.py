"""Different users read the same path at the same moment.

Catches response caches keyed by path alone.
"""

import pytest


@pytest.mark.conditions("same_path_concurrent_reads", "shared_identifiers")
@pytest.mark.parametrize("key", ["profile", "prefs"])
def test_users_reading_the_same_path_at_once_get_their_own_answer(harness, key):
    users = harness.users()
    harness.write_state(users, key)
    harness.read_state_together(users, key, bursts=4)
    harness.verify()
