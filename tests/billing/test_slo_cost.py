"""SLO budgets and cost of serving, computed from the ledger: exact numbers from known rows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing.models import Plan
from billing.selectors_cost import cost_csv_row, serving_cost_report, serving_cost_totals
from billing.selectors_slo import DEFAULT_TARGETS, slo_report
from billing.services.plans import plan_create, plan_slo_set
from core.errors import ValidationFailed
from tenants.models import AuditEvent
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
MARCH = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)


def record(tenant: Any, *, at: datetime, ttft: int | None = 5, engine_ms: float = 0.0, **kw: Any) -> dict[str, Any]:
    return {**journal_record(tenant, at=at, **kw), "ttft_ms": ttft, "engine_ms": engine_ms}


def test_availability_and_latency_budgets_from_the_ledger() -> None:
    acme, globex = factories.tenant("acme-slo"), factories.tenant("globex-slo")
    priced = plan_with_price(name="Gold")
    Plan.objects.filter(pk=priced.plan.pk).update(slo_availability=Decimal("99.000"), slo_ttft_p95_ms=100)
    subscribe_directly(acme, priced.plan)
    day = MARCH + timedelta(days=3)
    rows = [record(acme, at=day, ttft=50) for _ in range(196)]
    rows += [record(acme, at=day, ttft=None, outcome="error")]  # failed before a token: counts once
    rows += [record(acme, at=day, ttft=500, outcome="error")]  # failed late: a failure and slow
    rows += [record(acme, at=day, ttft=101) for _ in range(2)]  # slower than the 100 ms target
    rows += [record(acme, at=day, ttft=100, outcome="aborted")]  # on target; aborting is no failure
    rows += [record(acme, at=MARCH - timedelta(seconds=1), outcome="error")]  # February: not counted
    rows += [record(globex, at=day, ttft=3000) for _ in range(4)]  # no plan: default targets
    ledger_add(rows)

    report = {(r.tenant_slug, r.model): r for r in slo_report(tenant=None, month=MARCH, now=NOW)}
    a = report[("acme-slo", "demo-llama")]
    assert (a.requests, a.errors, a.timed, a.slow) == (201, 2, 200, 3)
    assert a.availability == Decimal("99.005")  # 199 / 201
    # 1% of 201 may fail (2.01); 2 did: 1 - 2/2.01 of the budget is left.
    assert a.availability_budget_left == Decimal("0.498")
    # 5% of 200 timed requests may be slow (10); 3 were.
    assert a.latency_budget_left == Decimal("70.000") and a.ttft_within_target == Decimal("98.500")
    assert a.met
    g = report[("globex-slo", "demo-llama")]
    assert g.targets == DEFAULT_TARGETS
    assert (g.slow, g.latency_budget_left) == (4, Decimal("-1900.000")) and not g.met
    # A tenant sees its own rows only; a month without traffic has its whole budget.
    assert [r.tenant_slug for r in slo_report(tenant=acme, month=MARCH, now=NOW)] == ["acme-slo"]
    assert slo_report(tenant=acme, month=datetime(2026, 4, 1, tzinfo=UTC), now=NOW) == []


def test_plan_slo_targets_are_validated_and_audited() -> None:
    plan = plan_create(name="SLO plan", currency="USD", actor=factories.SYSTEM, slo_availability="99.9")
    assert (plan.slo_availability, plan.slo_ttft_p95_ms) == (Decimal("99.9"), DEFAULT_TARGETS.ttft_p95_ms)
    plan_slo_set(plan=plan, actor=factories.SYSTEM, slo_ttft_p95_ms=800, slo_itl_p95_ms=80)
    plan.refresh_from_db()
    assert (plan.slo_ttft_p95_ms, plan.slo_itl_p95_ms) == (800, 80)
    for bad in ({"slo_availability": "100"}, {"slo_availability": "abc"}, {"slo_ttft_p95_ms": 0}):
        with pytest.raises(ValidationFailed):
            plan_slo_set(plan=plan, actor=factories.SYSTEM, **bad)
    with pytest.raises(ValidationFailed) as exc:
        plan_slo_set(plan=plan, actor=factories.SYSTEM, slo_itl_p95_ms=True)  # type: ignore[arg-type]
    assert exc.value.param == "slo_itl_p95_ms"
    plan.refresh_from_db()
    assert plan.slo_itl_p95_ms == 80  # refused changes change nothing


def test_cost_report_is_the_exact_sum_of_the_ledger(settings: Any) -> None:
    settings.BILLING_NODE_HOUR_PRICE = Decimal("36.00")  # one cent per engine-second
    settings.BILLING_NODE_HOUR_CURRENCY = "USD"
    acme, globex = factories.tenant("acme-cost"), factories.tenant("globex-cost")
    subscribe_directly(acme, plan_with_price(input_per_1m="1.0", output_per_1m="2.0").plan)
    subscribe_directly(globex, plan_with_price(input_per_1m="3.0", output_per_1m="4.0").plan)
    day = MARCH + timedelta(days=9)
    ledger_add(
        [
            record(acme, at=day, engine_ms=1500.25, prompt=1000, completion=500),
            record(acme, at=day, engine_ms=499.75, prompt=1000, completion=500, model="other-model"),
        ],
        node="node-a",
    )
    ledger_add([record(globex, at=day, engine_ms=12000.125, prompt=2000, completion=1000)], node="node-b")
    ledger_add([record(acme, at=MARCH - timedelta(days=1), engine_ms=99999.0)], node="node-a")  # February

    by_tenant = {r.key: r for r in serving_cost_report(month=MARCH, by="tenant")}
    acme_row, globex_row = by_tenant["acme-cost"], by_tenant["globex-cost"]
    assert (acme_row.requests, acme_row.engine_seconds) == (2, Decimal("2.000"))
    assert acme_row.revenue == Decimal("0.002")  # (1000 x 1 + 500 x 2) / 1M; other-model has no price
    assert acme_row.cost == Decimal("0.020000") and acme_row.margin == Decimal("-0.018")
    assert globex_row.engine_seconds == Decimal("12.000125") and globex_row.cost == Decimal("0.120001")
    assert globex_row.revenue == Decimal("0.010")
    by_model = {r.key: r.engine_seconds for r in serving_cost_report(month=MARCH, by="model")}
    assert by_model == {"demo-llama": Decimal("13.500375"), "other-model": Decimal("0.49975")}
    by_node = {r.key: (r.requests, r.engine_seconds) for r in serving_cost_report(month=MARCH, by="node")}
    assert by_node == {"node-a": (2, Decimal("2")), "node-b": (1, Decimal("12.000125"))}
    total = serving_cost_totals(list(by_tenant.values()))
    assert total is not None
    assert (total.requests, total.engine_seconds, total.revenue) == (3, Decimal("14.000125"), Decimal("0.012"))
    assert cost_csv_row(acme_row, "tenant") == [
        "2026-03", "tenant", "acme-cost", 2, "0.002", "USD", "2", "0.02", "USD", "-0.018"
    ]  # fmt: skip
    settings.BILLING_NODE_HOUR_CURRENCY = "EUR"
    assert serving_cost_report(month=MARCH, by="tenant")[0].margin is None  # no margin across currencies


def _plan_form(page: str) -> dict[str, str]:
    """The admin change form's fields as the browser would post them (inline management included)."""
    data = {}
    for name, value in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page):
        data[name] = value
    for name, value in re.findall(r'<textarea[^>]*name="([^"]+)"[^>]*>([^<]*)</textarea>', page):
        data[name] = value.strip()
    data.pop("_addanother", None)
    data.pop("_continue", None)
    return data


def test_staff_edit_slo_targets_in_the_admin() -> None:
    plan = plan_with_price(name="Admin SLO").plan
    client = Client()
    client.force_login(factories.staff_user())
    url = f"/admin/billing/plan/{plan.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Service-level objectives" in html and 'name="slo_ttft_p95_ms"' in html
    form = _plan_form(html)
    form.update({"currency": "USD", "is_active": "on", "slo_availability": "100", "slo_ttft_p95_ms": "900"})
    refused = client.post(url, form)
    assert refused.status_code == 200 and "less than or equal to 99.999" in refused.content.decode()
    plan.refresh_from_db()
    assert plan.slo_ttft_p95_ms == DEFAULT_TARGETS.ttft_p95_ms  # nothing saved
    form["slo_availability"] = "99.95"
    saved = client.post(url, form)
    assert saved.status_code == 302, saved.content.decode()[:3000]
    plan.refresh_from_db()
    assert (plan.slo_availability, plan.slo_ttft_p95_ms) == (Decimal("99.950"), 900)
    event = AuditEvent.objects.get(action="plan.slo_set", target_id=str(plan.pk))
    assert set(event.after) == {"slo_availability", "slo_ttft_p95_ms"}
