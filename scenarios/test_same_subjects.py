"""Users of several tenants publish on the same subjects at the same moment.

The same user ids in every tenant and the same thread ids for everyone, so
users of different tenants publish on identical subjects (``u0.main`` in each
tenant's NATS account, the same channel names in a pub/sub service). Catches
subscriptions wider than a user's own subjects, one tenant's streams exported
into another's account, and channel registries keyed by name alone.
"""

import pytest


@pytest.mark.conditions("overlapping_runs", "shared_identifiers")
def test_users_publishing_on_the_same_subjects_receive_only_their_own(harness):
    users = harness.users(max(harness.sizes.users, 4), tenants=2)
    harness.chat(users, messages=2, thread_ids="shared")
    harness.verify()
