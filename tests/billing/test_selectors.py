"""Billing selectors: the plans on offer with their current prices, and usage buckets narrowed in SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import Plan, Price, UsageRecord
from billing.selectors import plan_list, usage_buckets
from tenants.models import Tenant
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
DAY = datetime(2026, 3, 2, tzinfo=UTC)


def _price(plan: Plan, model: str, inp: str, out: str, since: datetime) -> Price:
    return Price.objects.create(
        plan=plan, model_name=model, input_per_1m=Decimal(inp), output_per_1m=Decimal(out), effective_from=since
    )


# --- plan_list -------------------------------------------------------------------------------
def test_plan_list_gives_active_plans_by_name_with_the_prices_in_effect_now(
    django_assert_num_queries: Any,
) -> None:
    pro = plan_with_price(name="Pro", model="demo-llama", input_per_1m="3", output_per_1m="6").plan
    _price(pro, "demo-llama", "2.5", "5", NOW - timedelta(days=1))  # replaces the 2020 price
    _price(pro, "demo-llama", "1", "1", NOW + timedelta(days=1))  # scheduled: not yet
    _price(pro, "big-model", "10", "30", NOW - timedelta(days=30))
    starter = plan_with_price(name="Starter", input_per_1m="1", output_per_1m="2").plan
    retired = plan_with_price(name="Retired").plan
    retired.is_active = False
    retired.save(update_fields=["is_active"])
    future_only = Plan.objects.create(name="Future")
    _price(future_only, "demo-llama", "9", "9", NOW + timedelta(days=10))

    with django_assert_num_queries(2):  # plans, then their prices
        offers = plan_list(now=NOW)

    assert [o.plan.name for o in offers] == ["Future", "Pro", "Starter"]
    by_name = {o.plan.name: o for o in offers}
    pro_prices = [(p.model_name, p.input_per_1m, p.output_per_1m) for p in by_name["Pro"].prices]
    assert pro_prices == [("big-model", Decimal("10"), Decimal("30")), ("demo-llama", Decimal("2.5"), Decimal("5"))]
    assert [(p.model_name, p.input_per_1m) for p in by_name["Starter"].prices] == [("demo-llama", Decimal("1"))]
    assert by_name["Future"].prices == []
    assert by_name["Starter"].plan == starter


def test_plan_list_defaults_to_now_and_lists_nothing_without_active_plans() -> None:
    assert plan_list() == []
    plan = plan_with_price(name="Only", effective_from=datetime.now(UTC) - timedelta(minutes=1)).plan
    offers = plan_list()
    assert [(o.plan, len(o.prices)) for o in offers] == [(plan, 1)]


# --- usage_buckets filters -------------------------------------------------------------------
@pytest.fixture
def usage() -> dict[str, Any]:
    """One tenant's usage on one day: two models, two keys and requests made without a key."""
    tenant = factories.tenant("sel-usage")
    other = factories.tenant("sel-other")
    k1, _ = factories.inference_key(tenant, name="k1")
    k2, _ = factories.inference_key(tenant, name="k2")
    priced = plan_with_price(input_per_1m="1", output_per_1m="1")
    subscribe_directly(tenant, priced.plan)
    subscribe_directly(other, priced.plan)
    at = DAY + timedelta(hours=3)
    ledger_add(
        [
            journal_record(tenant, key=k1.pk, model="alpha", prompt=100, completion=10, at=at),
            journal_record(tenant, key=k1.pk, model="beta", prompt=200, completion=20, at=at),
            journal_record(tenant, key=k2.pk, model="alpha", prompt=300, completion=30, at=at),
            journal_record(tenant, key=None, model="beta", prompt=400, completion=40, at=at),
            journal_record(other, key=None, model="alpha", prompt=5000, completion=500, at=at),
        ]
    )
    return {"tenant": tenant, "k1": k1, "k2": k2}


def _inputs(tenant: Tenant, **filters: Any) -> int:
    buckets = usage_buckets(
        tenant=tenant, start=DAY, end=DAY + timedelta(days=1), bucket="day", group_by=["model", "key"], **filters
    )
    assert len(buckets) == 1
    return sum(r.input_tokens for r in buckets[0].results)


def test_usage_buckets_narrow_to_a_model_a_key_or_several(usage: dict[str, Any]) -> None:
    tenant, k1, k2 = usage["tenant"], usage["k1"].pk, usage["k2"].pk
    assert _inputs(tenant) == 1000
    assert _inputs(tenant, model="alpha") == 400  # never the other tenant's alpha
    assert _inputs(tenant, model=["alpha", "beta"]) == 1000
    assert _inputs(tenant, key=k1) == 300
    assert _inputs(tenant, key=[k1, k2]) == 600
    assert _inputs(tenant, key=0) == 400  # requests made without a key
    assert _inputs(tenant, model="beta", key=k1) == 200
    assert _inputs(tenant, model="gamma") == 0
    assert _inputs(tenant, model=[]) == 0
    assert _inputs(tenant, key=[]) == 0


def test_usage_buckets_keep_empty_buckets_and_group_when_filtered(usage: dict[str, Any]) -> None:
    tenant, k1 = usage["tenant"], usage["k1"].pk
    buckets = usage_buckets(
        tenant=tenant, start=DAY, end=DAY + timedelta(days=2), bucket="day", group_by=["model"], key=k1
    )
    assert [b.start for b in buckets] == [DAY, DAY + timedelta(days=1)]
    assert buckets[1].results == []
    assert [(r.model, r.input_tokens, r.api_key_id) for r in buckets[0].results] == [
        ("alpha", 100, None),
        ("beta", 200, None),
    ]
    rows = UsageRecord.objects.filter(tenant=tenant, key_id=k1)
    assert sum(r.requests for r in buckets[0].results) == rows.count()


def test_usage_buckets_filter_in_the_query(usage: dict[str, Any]) -> None:
    """The database does the narrowing: one query whose WHERE names the model and the key."""
    k2 = usage["k2"].pk
    with CaptureQueriesContext(connection) as queries:
        buckets = usage_buckets(
            tenant=usage["tenant"],
            start=DAY,
            end=DAY + timedelta(days=1),
            bucket="day",
            group_by=["model", "key"],
            model=["alpha"],
            key=[k2],
        )
    assert len(queries.captured_queries) == 1
    where = queries.captured_queries[0]["sql"].split("WHERE", 1)[1]
    assert '"model_name" IN' in where and '"key_id" IN' in where
    assert [(r.model, r.api_key_id, r.input_tokens) for r in buckets[0].results] == [("alpha", k2, 300)]
