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
    """Seconds since each registered node's journal was last pulled into the ledger, and how many
    records each node's journal has given the ledger."""

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
            ingested = CounterMetricFamily(
                "mmorch_usage_ingested_records",
                "Journal records ingested into the ledger, per node",
                labels=["node"],
            )
            for name, total in IngestCursor.objects.order_by("node_name").values_list("node_name", "records_total"):
                ingested.add_metric([name], float(total))
        except DatabaseError:
            return  # the database is down: /readyz says so; no sample beats a wrong one
        yield gauge
        yield ingested


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


class SloTargetsCollector(Collector):
    """Each active tenant's service-level targets (from its plan), for the burn-rate alert rules.

    The node labels requests by tenant id and folds tenants past its cap into `other`; `other`
    gets the default targets here so those requests are judged too.
    """

    def collect(self) -> Iterator[Metric]:
        from billing.selectors_slo import DEFAULT_TARGETS, slo_targets_by_tenant
        from tenants.models import Tenant, TenantStatus

        availability = GaugeMetricFamily(
            "mmorch_slo_availability_target_ratio",
            "Share of admitted requests that must not fail, from the tenant's plan",
            labels=["tenant"],
        )
        ttft = GaugeMetricFamily(
            "mmorch_slo_ttft_p95_target_seconds", "p95 time to first token objective", labels=["tenant"]
        )
        itl = GaugeMetricFamily(
            "mmorch_slo_itl_p95_target_seconds", "p95 inter-token latency objective", labels=["tenant"]
        )
        try:
            ids = list(Tenant.objects.filter(status=TenantStatus.ACTIVE).values_list("id", flat=True))
            targets = {str(k): v for k, v in slo_targets_by_tenant(ids, now=timezone.now()).items()}
        except DatabaseError:
            return
        targets["other"] = DEFAULT_TARGETS
        for tenant, t in sorted(targets.items()):
            availability.add_metric([tenant], float(t.availability) / 100)
            ttft.add_metric([tenant], t.ttft_p95_ms / 1000)
            itl.add_metric([tenant], t.itl_p95_ms / 1000)
        yield availability
        yield ttft
        yield itl
