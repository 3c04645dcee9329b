"""Many users send at once, so their agent runs overlap in time.

Catches state kept on a shared object across an ``await`` (a singleton
emitter that sends to whichever socket asked last).
"""

import pytest


@pytest.mark.conditions("overlapping_runs")
@pytest.mark.parametrize("messages_in_flight", [1, 4])
def test_users_sending_at_once_receive_only_their_own_events(harness, messages_in_flight):
    users = harness.users()
    harness.chat(users, messages=messages_in_flight, connections=1)
    harness.verify()
