"""isoharness: multi-tenant isolation test harness."""
