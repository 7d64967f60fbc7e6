"""Fixtures every test suite shares: a clean cache and Redis database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
