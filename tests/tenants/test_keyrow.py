"""The cold lookup's prepared query gives exactly what the ORM's select_related gives."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from tenants.keyauth import _context_from_key
from tenants.keyrow import key_row_by_digest
from tenants.models import APIKey, TenantLimits
from tests import factories

pytestmark = pytest.mark.django_db


def _orm(key_id: int) -> APIKey:
    return APIKey.objects.select_related("tenant", "tenant__limits").get(pk=key_id)


def _same(key: APIKey) -> None:
    fast = key_row_by_digest(key.digest)
    assert fast is not None
    orm = _orm(key.pk)
    for model_row, expected in ((fast, orm), (fast.tenant, orm.tenant)):
        for field in type(expected)._meta.concrete_fields:
            assert getattr(model_row, field.attname) == getattr(expected, field.attname), field.name
    assert _context_from_key(fast) == _context_from_key(orm)


def test_a_tenant_without_limits(django_assert_num_queries: Any) -> None:
    tenant = factories.tenant()
    TenantLimits.objects.filter(tenant=tenant).delete()
    key, _ = factories.inference_key(tenant, allowed_models=("demo-llama",))
    with django_assert_num_queries(1):
        fast = key_row_by_digest(key.digest)
        assert fast is not None
        with pytest.raises(TenantLimits.DoesNotExist):
            _ = fast.tenant.limits
    _same(key)


def test_limits_json_decimals_and_times_come_back_typed(django_assert_num_queries: Any) -> None:
    tenant = factories.tenant(requests_per_minute=60, monthly_spend_cap=Decimal("12.345678"), max_output_tokens=99)
    key, _ = factories.inference_key(
        tenant, allowed_models=("a", "b"), expires_at=timezone.now() + timedelta(days=3),
        limits={"tokens_per_minute": 1234},
    )  # fmt: skip
    with django_assert_num_queries(1):
        fast = key_row_by_digest(key.digest)
        assert fast is not None and fast.tenant.limits.monthly_spend_cap == Decimal("12.345678")
    assert fast.allowed_models == ["a", "b"] and fast.scopes == key.scopes
    assert fast.expires_at is not None and fast.expires_at.tzinfo is not None
    _same(key)


def test_an_unknown_digest() -> None:
    assert key_row_by_digest("0" * 64) is None
