"""A sustained mixed load: churn, simultaneous reads, deletes and cross-user probes together.

Sized by ``--duration`` and ``--rate``: seconds in CI, hours in a soak. Users
also delete and re-create their state under one shared key and list their
threads (delete paths and listing caches), and some sessions send a frame the
service must refuse (error paths).
"""

import pytest


@pytest.mark.conditions(
    "overlapping_runs",
    "disconnects_mid_run",
    "reconnects",
    "same_path_concurrent_reads",
    "reads_after_delete",
    "bad_frames_interleaved",
)
def test_sustained_mixed_load_keeps_users_apart(harness):
    users = harness.users()
    harness.mixed_load(users)
    harness.verify()
