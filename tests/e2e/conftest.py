"""Fixtures for end-to-end tests: fast hashing, and no stray connections left on the test database."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(end_stray_db_sessions: None) -> None:
    """Worker threads and server processes of this suite leave database sessions behind."""
