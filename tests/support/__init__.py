"""Helpers shared by several test suites (real processes, not mocks)."""
