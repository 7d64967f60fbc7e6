"""Fixtures for the billing tests: fast hashing, no Stripe, mail kept in memory.

The data helpers (journal records, ledger inserts, priced plans, subscriptions) live in
`tests.factories`; they are re-exported here for test modules that still import them from this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import PricedPlan, journal_record, ledger_add, plan_with_price, subscribe_directly

__all__ = ["PricedPlan", "journal_record", "ledger_add", "plan_with_price", "subscribe_directly"]


@pytest.fixture(autouse=True)
def _fast_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STRIPE_API_KEY = ""
    settings.STRIPE_ENABLED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
