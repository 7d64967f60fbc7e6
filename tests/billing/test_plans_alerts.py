"""Plans, prices and subscriptions; the spend feed into the gateway; usage alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core import mail

from billing.models import Price, Subscription, UsageAlert
from billing.services.alerts import usage_alerts_check
from billing.services.plans import plan_create, price_set, subscription_create
from billing.services.spend import spend_feed_push
from core.errors import Conflict, ValidationFailed
from gateway import quota
from gateway import services as gateway_services
from gateway.models import ModelGrant
from tenants.models import AuditEvent, TenantLimits
from tenants.permissions import Role
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
SYSTEM = factories.SYSTEM


def test_subscribe_applies_limits_and_grants_plan_models() -> None:
    gateway_services.model_create(name="demo-llama", actor=SYSTEM)
    gateway_services.model_create(name="big-model", actor=SYSTEM)
    plan = plan_create(
        name="Team",
        currency="eur",
        base_fee="99.00",
        included_tokens=5_000_000,
        actor=SYSTEM,
        default_limits={"requests_per_minute": 600, "monthly_spend_cap": "250.00", "monthly_token_budget": 10**8},
    )
    assert plan.currency == "EUR"
    soon = datetime.now(UTC) + timedelta(seconds=5)
    price_set(
        plan=plan,
        model_name="demo-llama",
        input_per_1m="0.100000",
        output_per_1m="0.2",
        actor=SYSTEM,
        effective_from=soon,
    )
    price_set(plan=plan, model_name="big-model", input_per_1m="3", output_per_1m="15", actor=SYSTEM)
    tenant = factories.tenant()
    sub = subscription_create(tenant=tenant, plan=plan, actor=SYSTEM)
    limits = TenantLimits.objects.get(tenant=tenant)
    assert limits.requests_per_minute == 600 and limits.monthly_spend_cap == Decimal("250.00")
    assert set(ModelGrant.objects.filter(tenant=tenant, source="plan").values_list("model__name", flat=True)) == {
        "demo-llama",
        "big-model",
    }
    # Moving to another plan ends the first subscription where the second starts.
    other = plan_create(name="Solo", currency="EUR", actor=SYSTEM)
    price_set(plan=other, model_name="demo-llama", input_per_1m="1", output_per_1m="1", actor=SYSTEM)
    later = subscription_create(tenant=tenant, plan=other, actor=SYSTEM)
    sub.refresh_from_db()
    assert sub.ends_at == later.starts_at
    assert set(ModelGrant.objects.filter(tenant=tenant, source="plan").values_list("model__name", flat=True)) == {
        "demo-llama"
    }


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input_per_1m": "0.0000001"}, "input_per_1m"),
        ({"input_per_1m": "-1"}, "input_per_1m"),
        ({"output_per_1m": "abc"}, "output_per_1m"),
        ({"output_per_1m": "NaN"}, "output_per_1m"),
        ({"effective_from": datetime(2020, 1, 1, tzinfo=UTC)}, "effective_from"),
        ({"model_name": ""}, "model"),
    ],
)
def test_bad_prices_are_refused(kwargs: dict[str, Any], param: str) -> None:
    plan = plan_create(name="P", currency="USD", actor=SYSTEM)
    args: dict[str, Any] = {"plan": plan, "model_name": "m", "input_per_1m": "1", "output_per_1m": "1", "actor": SYSTEM}
    args.update(kwargs)
    with pytest.raises(ValidationFailed) as info:
        price_set(**args)
    assert info.value.param == param
    assert not Price.objects.exists()


def test_bad_plans_and_subscriptions_write_nothing() -> None:
    with pytest.raises(ValidationFailed):
        plan_create(name="X", currency="dollars", actor=SYSTEM)
    with pytest.raises(ValidationFailed):
        plan_create(name="X", currency="USD", base_fee="1.001", actor=SYSTEM)
    with pytest.raises(ValidationFailed):
        plan_create(name="X", currency="USD", default_limits={"colour": 1}, actor=SYSTEM)
    plan = plan_create(name="X", currency="USD", actor=SYSTEM)
    with pytest.raises(Conflict):
        plan_create(name="X", currency="USD", actor=SYSTEM)
    price_set(plan=plan, model_name="not-registered", input_per_1m="1", output_per_1m="1", actor=SYSTEM)
    tenant = factories.tenant()
    with pytest.raises(ValidationFailed):
        subscription_create(tenant=tenant, plan=plan, actor=SYSTEM, starts_at=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationFailed):  # the plan names a model the registry does not know
        subscription_create(tenant=tenant, plan=plan, actor=SYSTEM)
    assert not Subscription.objects.exists()


@time_machine.travel(datetime(2026, 3, 17, 12, tzinfo=UTC), tick=False)
def test_spend_feed_pushes_month_to_date_per_tenant_and_key() -> None:
    backend = quota.MemoryQuota()
    quota.backend_set(backend)
    try:
        tenant = factories.tenant()
        key, _ = factories.inference_key(tenant)
        priced = plan_with_price(input_per_1m="2", output_per_1m="4")
        subscribe_directly(tenant, priced.plan)
        now = datetime.now(UTC)
        ledger_add(
            [journal_record(tenant, key=key.pk, prompt=1000, completion=500, at=now) for _ in range(3)]
            + [journal_record(tenant, prompt=100, completion=0, at=now)]
            + [journal_record(tenant, prompt=10**6, completion=0, at=now - timedelta(days=40))]  # an earlier month
        )
        assert spend_feed_push(tenant_ids=[tenant.pk], now=now) == 2
        period = f"{now.year:04d}-{now.month:02d}"
        month = backend._month
        assert month[f"tenant:{tenant.pk}:mtok:{period}"] == 3 * 1500 + 100
        assert month[f"key:{key.pk}:mtok:{period}"] == 4500
        assert month[f"key:{key.pk}:mspend:{period}"] == Decimal(3) * (Decimal(1000) * 2 + Decimal(500) * 4) / 10**6
    finally:
        quota.backend_set(None)


@time_machine.travel(datetime(2026, 3, 17, 12, tzinfo=UTC), tick=False)
def test_alerts_at_80_and_100_percent_once_per_threshold() -> None:
    tenant, users = factories.tenant_with_members(roles=[Role.OWNER, Role.FINANCE, Role.DEVELOPER])
    factories.services.limits_update(
        tenant=tenant, actor=SYSTEM, monthly_token_budget=10_000, monthly_spend_cap=Decimal("1000")
    )
    now = datetime.now(UTC)
    ledger_add([journal_record(tenant, prompt=7000, completion=0, at=now)])
    assert usage_alerts_check(tenant_ids=[tenant.pk], now=now) == []
    ledger_add([journal_record(tenant, prompt=1000, completion=0, at=now)])
    sent = usage_alerts_check(tenant_ids=[tenant.pk], now=now)
    assert [(a.kind, a.threshold) for a in sent] == [("tokens", 80)]
    assert len(mail.outbox) == 1
    assert set(mail.outbox[0].to) == {users[Role.OWNER].email, users[Role.FINANCE].email}
    assert usage_alerts_check(tenant_ids=[tenant.pk], now=now) == []  # once per threshold
    ledger_add([journal_record(tenant, prompt=2500, completion=0, at=now)])
    sent = usage_alerts_check(tenant_ids=[tenant.pk], now=now)
    assert [(a.kind, a.threshold) for a in sent] == [("tokens", 100)]
    assert len(mail.outbox) == 2 and "100%" in mail.outbox[1].subject
    assert UsageAlert.objects.filter(tenant=tenant).count() == 2


def test_admin_adds_prices_through_the_service() -> None:
    from django.test import Client

    staff = factories.staff_user()
    client = Client()
    client.force_login(staff)
    plan = plan_create(name="Admin plan", currency="USD", actor=SYSTEM)
    later = datetime.now(UTC) + timedelta(days=2)
    form = {
        "plan": plan.pk,
        "model_name": "demo-llama",
        "input_per_1m": "0.5",
        "output_per_1m": "1.5",
        "effective_from_0": later.strftime("%Y-%m-%d"),
        "effective_from_1": later.strftime("%H:%M:%S"),
    }
    response = client.post("/admin/billing/price/add/", form)
    assert response.status_code == 302, response.content[:2000]
    price = Price.objects.get(plan=plan)
    assert price.input_per_1m == Decimal("0.5")
    assert AuditEvent.objects.filter(action="price.set", target_id=str(price.pk)).exists()
    # A backdated price is refused on the form and nothing is written.
    form["effective_from_0"] = "2020-01-01"
    response = client.post("/admin/billing/price/add/", form)
    assert response.status_code == 200 and b"never backwards" in response.content
    assert Price.objects.filter(plan=plan).count() == 1
