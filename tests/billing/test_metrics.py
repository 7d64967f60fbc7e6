"""Billing metrics that operators alert on: billing runs by outcome and usage ingestion lag."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from billing.models import BillingRun, BillingRunOutcome, IngestCursor, Plan
from billing.services import invoices
from billing.services.invoices import billing_run
from core.errors import ValidationFailed
from gateway.services import node_register
from tenants.models import TenantStatus
from tests import factories
from tests.factories import plan_with_price, subscribe_directly


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.django_db
def test_billing_runs_are_recorded_and_counted_by_outcome(monkeypatch: Any) -> None:
    billing_run(period="2026-03")
    assert BillingRun.objects.get().outcome == BillingRunOutcome.SUCCESS

    def broken(**_: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(invoices, "_billing_run_issue", broken)
    with pytest.raises(RuntimeError):
        billing_run(period="2026-04")
    failure = BillingRun.objects.get(outcome=BillingRunOutcome.FAILURE)
    assert failure.period == "2026-04" and "database went away" in failure.error

    samples = scrape()
    assert samples[("mmorch_billing_runs_total", (("outcome", "success"),))] == 1
    assert samples[("mmorch_billing_runs_total", (("outcome", "failure"),))] == 1


@pytest.mark.django_db
def test_a_refused_period_is_not_a_run() -> None:
    with pytest.raises(ValidationFailed):
        billing_run(period="2026-13")
    assert not BillingRun.objects.exists()


@pytest.mark.django_db
def test_ingest_lag_is_reported_for_registered_nodes_only() -> None:
    node_register(name="node-a", base_url="http://127.0.0.1:9", actor=factories.SYSTEM)
    IngestCursor.objects.create(node_name="node-a", updated_at=timezone.now() - timedelta(minutes=20))
    IngestCursor.objects.create(node_name="gone", updated_at=timezone.now() - timedelta(days=3))
    never = node_register(name="node-b", base_url="http://127.0.0.1:10", actor=factories.SYSTEM)
    type(never).objects.filter(pk=never.pk).update(created_at=timezone.now() - timedelta(hours=2))
    samples = scrape()
    lag = samples[("mmorch_usage_ingest_lag_seconds", (("node", "node-a"),))]
    assert 20 * 60 <= lag < 21 * 60
    assert 2 * 3600 <= samples[("mmorch_usage_ingest_lag_seconds", (("node", "node-b"),))] < 2 * 3600 + 60
    assert ("mmorch_usage_ingest_lag_seconds", (("node", "gone"),)) not in samples


@pytest.mark.django_db
def test_ingested_records_are_counted_per_node() -> None:
    IngestCursor.objects.create(node_name="node-a", records_total=1234)
    IngestCursor.objects.create(node_name="node-b", records_total=0)
    samples = scrape()
    assert samples[("mmorch_usage_ingested_records_total", (("node", "node-a"),))] == 1234
    assert samples[("mmorch_usage_ingested_records_total", (("node", "node-b"),))] == 0


@pytest.mark.django_db
def test_slo_targets_are_exported_per_active_tenant_and_for_other() -> None:
    gold, plain, gone = factories.tenant("gold-slo"), factories.tenant("plain-slo"), factories.tenant("gone-slo")
    plan = plan_with_price(name="Gold SLO").plan
    Plan.objects.filter(pk=plan.pk).update(slo_availability=Decimal("99.9"), slo_ttft_p95_ms=750, slo_itl_p95_ms=40)
    subscribe_directly(gold, plan)
    type(gone).objects.filter(pk=gone.pk).update(status=TenantStatus.SUSPENDED)
    samples = scrape()

    def target(name: str, tenant: str) -> float | None:
        return samples.get((name, (("tenant", tenant),)))

    assert target("mmorch_slo_availability_target_ratio", str(gold.pk)) == pytest.approx(0.999)
    assert target("mmorch_slo_ttft_p95_target_seconds", str(gold.pk)) == pytest.approx(0.75)
    assert target("mmorch_slo_itl_p95_target_seconds", str(gold.pk)) == pytest.approx(0.04)
    for tenant in (str(plain.pk), "other"):  # no plan, or folded on the node: the defaults
        assert target("mmorch_slo_availability_target_ratio", tenant) == pytest.approx(0.995)
        assert target("mmorch_slo_ttft_p95_target_seconds", tenant) == pytest.approx(2.0)
    assert target("mmorch_slo_availability_target_ratio", str(gone.pk)) is None
