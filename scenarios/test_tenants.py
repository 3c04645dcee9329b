"""Several tenants, several users in each, and the same user ids in every tenant.

AEP/1 §1: a user is the pair (tenant, sub); the same sub in two tenants is
two users. Catches registries keyed by sub alone and tenant-wide broadcasts.
The chat test needs nothing but messages, so it runs for every adapter; the
state test needs AEP/1's state API and is skipped where there is none.
"""

import pytest


@pytest.mark.conditions("overlapping_runs", "shared_identifiers")
@pytest.mark.parametrize("tenants", [2, 4])
def test_tenants_with_the_same_user_ids_stay_apart(harness, tenants):
    users = harness.users(max(harness.sizes.users, 2 * tenants), tenants=tenants)
    harness.chat(users, thread_ids="shared")
    harness.verify()


@pytest.mark.conditions("shared_identifiers")
def test_tenants_writing_the_same_state_key_read_back_their_own_value(harness):
    users = harness.users(max(harness.sizes.users, 4), tenants=2)
    harness.write_state(users, "profile")
    harness.verify()
