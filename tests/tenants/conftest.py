"""Fixtures for the tenants tests: fast password hashing and a fresh key cache per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tenants import services


@pytest.fixture(autouse=True)
def _fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> Iterator[None]:
    services.key_cache_reset()
    yield
    services.key_cache_reset()


@pytest.fixture(autouse=True)
def _tenants_urls(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.tenants.urls"
