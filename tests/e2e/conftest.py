"""Fixtures for end-to-end tests: fast hashing, no stray connections left on the test database, and
both planes per module (a demo node and one control-plane worker; a module that needs another
set-up defines its own `node` and `server`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.support import ControlPlane, control_plane
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node

REGISTRY_REFRESH_S = 0.2  # how often a gateway process reloads its routing snapshot in these tests


@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    with inference_node(secret=DEFAULT_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def server(django_db_setup: Any, node: InferenceNode) -> Iterator[ControlPlane]:
    env = {"INFERENCE_SHARED_SECRET": DEFAULT_SECRET, "GATEWAY_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S)}
    with control_plane(workers=1, env=env) as cp:
        yield cp


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
    from tests.support import inference_node as node_support

    key = re.compile(r"sk-(?:admin-)?[A-Za-z0-9_-]{16,}")
    secrets = {DEFAULT_SECRET}
    leaks = []
    for name, text in support.LOGS + node_support.LOGS:
        found = key.search(text)
        if found:
            leaks.append(f"{name}: an API key ({found.group(0)[:6]}...)")
        leaks.extend(f"{name}: the shared secret" for secret in secrets if secret in text)
    assert not leaks, "secrets in the logs: " + "; ".join(leaks)
