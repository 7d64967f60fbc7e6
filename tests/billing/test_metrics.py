"""Billing metrics that operators alert on: billing runs by outcome and usage ingestion lag."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from billing.models import BillingRun, BillingRunOutcome, IngestCursor
from billing.services import invoices
from billing.services.invoices import billing_run
from core.errors import ValidationFailed
from gateway.services import node_register
from tests import factories


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
