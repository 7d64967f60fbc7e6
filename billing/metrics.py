"""Billing metrics read from the database at scrape time, so any web process can answer them
whichever process (Celery worker, management command) did the work."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing.models import BillingRun, BillingRunOutcome, IngestCursor


class IngestLagCollector(Collector):
    """Seconds since each registered node's journal was last pulled into the ledger."""

    def collect(self) -> Iterator[Metric]:
        from gateway.selectors import node_list  # the registry lives in gateway (billing → gateway)

        gauge = GaugeMetricFamily(
            "mmorch_usage_ingest_lag_seconds",
            "Seconds since the node's usage journal was last pulled into the ledger",
            labels=["node"],
        )
        try:
            # A node never pulled yet counts from its registration, so it cannot go unnoticed.
            since = {node.name: node.created_at for node in node_list()}
            since.update(IngestCursor.objects.filter(node_name__in=since).values_list("node_name", "updated_at"))
            now = timezone.now()
            for name, moment in sorted(since.items()):
                gauge.add_metric([name], max(0.0, (now - moment).total_seconds()))
        except DatabaseError:
            return  # the database is down: /readyz says so; no sample beats a wrong one
        yield gauge


class BillingRunsCollector(Collector):
    """Billing runs by outcome, counted from their recorded history (rows are never deleted)."""

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "mmorch_billing_runs", "Billing runs (invoice issuing) by outcome", labels=["outcome"]
        )
        try:
            counts = dict(BillingRun.objects.values_list("outcome").annotate(n=Count("id")).values_list("outcome", "n"))
        except DatabaseError:
            return
        for outcome in BillingRunOutcome.values:
            counter.add_metric([outcome], counts.get(outcome, 0))
        yield counter
