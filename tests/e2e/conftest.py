"""Fixtures for end-to-end tests: fast hashing, and no stray connections left on the test database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(end_stray_db_sessions: None) -> None:
    """Worker threads and server processes of this suite leave database sessions behind."""


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log() -> Iterator[None]:
    """After the whole suite: no plaintext API key and no shared secret in any process's output."""
    yield
    from tests.e2e import support
    from tests.support import inference_node

    key = re.compile(r"sk-(?:admin-)?[A-Za-z0-9_-]{16,}")
    secrets = {inference_node.DEFAULT_SECRET}
    leaks = []
    for name, text in support.LOGS + inference_node.LOGS:
        found = key.search(text)
        if found:
            leaks.append(f"{name}: an API key ({found.group(0)[:6]}...)")
        leaks.extend(f"{name}: the shared secret" for secret in secrets if secret in text)
    assert not leaks, "secrets in the logs: " + "; ".join(leaks)
