"""Sustained volume: every user keeps a message in flight, run after run.

Some isolation bugs show once in thousands of events: a race in a connection
registry, a pooled backend pipe handed on while still busy. A closed loop, as
a load tool drives one, but with every frame recorded and checked.
"""

import pytest


@pytest.mark.conditions("overlapping_runs", "shared_identifiers")
def test_a_sustained_closed_loop_keeps_users_apart(harness):
    users = harness.users()
    harness.closed_loop(
        users, messages=max(40, 10 * harness.sizes.messages_per_user), thread_ids="shared"
    )
    harness.verify()
