"""Many users send at once, so their agent runs overlap in time.

Catches state kept on a shared object across an ``await`` (a singleton
emitter that sends to whichever socket asked last), including the request a
service remembers process-wide and puts in the error frame of another user's
bad frame: every user also sends a frame the service must refuse, its canary
inside, while the others' runs are in flight (AEP/1 adapters; for others the
condition is not required).
"""

import pytest


@pytest.mark.conditions("overlapping_runs", "bad_frames_interleaved")
@pytest.mark.parametrize("messages_in_flight", [1, 4])
def test_users_sending_at_once_receive_only_their_own_events(harness, messages_in_flight):
    users = harness.users()
    harness.chat(users, messages=messages_in_flight, connections=1, bad_frames=True)
    harness.verify()
