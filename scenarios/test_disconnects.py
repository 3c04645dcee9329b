"""Users leave in the middle of a run and come back; sessions come and go.

Catches registries that hand a reconnecting user someone else's in-flight
events, and shared backend pipes left dirty by a cancelled request.
"""

import pytest


@pytest.mark.conditions("disconnects_mid_run", "reconnects")
def test_users_who_drop_mid_run_and_reconnect_get_only_their_own_events(harness):
    users = harness.users()
    harness.disconnect_and_reconnect(users, rounds=2)
    harness.verify()


@pytest.mark.conditions("disconnects_mid_run", "reconnects", "overlapping_runs")
def test_session_churn_keeps_users_apart(harness):
    users = harness.users()
    harness.churn(users, duration_s=min(harness.sizes.duration_s, 3.0))
    harness.verify()


@pytest.mark.conditions("requests_cancelled_mid_flight")
def test_requests_abandoned_mid_flight_do_not_leak_answers(harness):
    users = harness.users()
    harness.write_state(users, "profile")
    harness.abort_requests(users, "profile")
    harness.verify()
