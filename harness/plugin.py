"""isoharness pytest plugin."""
