"""Standalone repro bundles for a culprit op: files, verification and a ready-to-file issue."""
