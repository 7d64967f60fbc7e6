"""Fixtures every test suite shares: a clean cache and Redis database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        pytest.fail("REDIS_URL must be set: the test suite runs against a real Redis")
    return url


@pytest.fixture(scope="session")
def end_stray_db_sessions(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """At the end of the session, end every other connection to the test database so it can be
    dropped: server processes that died hard and worker threads (cold key lookups, registry
    loads) leave sessions behind. Suites that start such processes or threads request it."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql" or not str(connection.settings_dict["NAME"]).startswith("test_"):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
