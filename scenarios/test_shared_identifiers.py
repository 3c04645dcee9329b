"""Users pick the same thread ids, message ids and state keys as each other.

Catches cache and store keys that miss the user (``thread_id`` alone, an
idempotency cache keyed by ``message_id`` alone). Ids are unique per user
only: clients cannot coordinate them with other users' clients.
"""

import pytest


@pytest.mark.conditions("shared_identifiers", "overlapping_runs")
def test_users_reusing_thread_ids_see_only_their_own_history(harness):
    users = harness.users()
    harness.chat(users, thread_ids="shared")
    harness.list_threads(users)
    harness.verify()


@pytest.mark.conditions("shared_message_ids", "shared_identifiers", "overlapping_runs")
def test_users_reusing_message_ids_receive_only_their_own_runs(harness):
    users = harness.users()
    harness.chat(users, thread_ids="shared", message_ids="shared")
    harness.verify()


@pytest.mark.conditions("shared_identifiers")
@pytest.mark.parametrize("key", ["profile", "settings:theme"])
def test_users_writing_the_same_state_key_read_back_their_own_value(harness, key):
    users = harness.users()
    harness.write_state(users, key)
    harness.read_state_together(users, key, bursts=1)
    harness.verify()
