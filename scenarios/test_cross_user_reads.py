"""Users ask for other users' resource ids with their own token.

Object-level authorization: only the owner may succeed. A refusal counts as
isolation only when the prober's session was valid and the owner's object
demonstrably existed (positive controls); otherwise it is inconclusive.
"""

import pytest


@pytest.mark.conditions("cross_user_probes")
def test_users_cannot_read_other_users_resources_by_id(harness):
    users = harness.users()
    harness.probe_other_users(users)
    harness.verify()
