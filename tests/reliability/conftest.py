"""Fixtures for the reliability tests: fast hashing, one demo node for the module, and no stray
connections left on the test database (servers here die hard on purpose)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node


@pytest.fixture(autouse=True)
def _fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(end_stray_db_sessions: None) -> None:
    """Killed server processes and worker threads leave database sessions behind."""


@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    # Room for 20 streams at once, so none waits in the node's queue.
    with inference_node(secret=DEFAULT_SECRET, INFERENCE_MAX_BATCH_SIZE="24") as running:
        yield running
