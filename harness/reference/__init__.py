"""The AEP/1 reference service: a separate program shipped in the same package."""
