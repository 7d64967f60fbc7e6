"""Ingestion of several nodes at once, and the page prefetch within one node."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.models import Count, Sum

from billing.models import Bucket, IngestCursor, UsageRecord, UsageRollup
from billing.services.ingestion import usage_ingest_all, usage_ingest_node
from gateway import services as gateway_services
from tests import factories
from tests.billing.journal_server import Journal, journal_server
from tests.factories import journal_record, plan_with_price, subscribe_directly

SECRET = "dev-inference-secret"


def _node(name: str, url: str) -> Any:
    return gateway_services.node_register(name=name, base_url=url, actor=factories.SYSTEM)


@pytest.mark.django_db(transaction=True)
def test_nodes_ingested_at_once_each_land_once_with_their_rollups(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    settings.BILLING_INGEST_PAGE_SIZE = 23
    settings.BILLING_INGEST_CONCURRENCY = 3
    tenants = [factories.tenant() for _ in range(3)]
    priced = plan_with_price(input_per_1m="0.150000", output_per_1m="0.600000")
    for tenant in tenants:
        subscribe_directly(tenant, priced.plan)
    journals = [Journal(SECRET) for _ in range(3)]
    for n, journal in enumerate(journals):
        # Every node serves every tenant in the same hours: they share rollup rows.
        for i in range(120 + n * 17):
            journal.append(**journal_record(tenants[i % 3], prompt=3 + i % 7, completion=1 + i % 5))
    with journal_server(journals[0]) as a, journal_server(journals[1]) as b, journal_server(journals[2]) as c:
        for name, url in (("node-a", a), ("node-b", b), ("node-c", c)):
            _node(name, url)
        _node("node-gone", "http://127.0.0.1:9")  # nothing listens there
        first = usage_ingest_all(feed=False)
        again = usage_ingest_all(feed=False)
    expected = sum(len(j.records) for j in journals)
    assert first.inserted == UsageRecord.objects.count() == expected
    assert set(first.errors) == {"node-gone"}
    assert IngestCursor.objects.get(node_name="node-gone").last_error
    assert again.inserted == 0
    for name, journal in zip(("node-a", "node-b", "node-c"), journals, strict=True):
        cursor = IngestCursor.objects.get(node_name=name)
        assert (cursor.after_seq, cursor.records_total) == (len(journal.records), len(journal.records))
        assert UsageRecord.objects.filter(node_name=name).count() == len(journal.records)
    ledger = UsageRecord.objects.aggregate(
        n=Count("id"), i=Sum("prompt_tokens"), o=Sum("completion_tokens"), c=Sum("cost")
    )
    assert ledger["i"] == sum(r["prompt_tokens"] for j in journals for r in j.records)
    for bucket in (Bucket.HOUR, Bucket.DAY):
        rolled = UsageRollup.objects.filter(bucket=bucket).aggregate(
            n=Sum("requests"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost")
        )
        assert rolled == ledger


@pytest.mark.django_db
def test_a_page_limit_stops_the_prefetch_and_the_cursor_at_the_limit(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    tenant = factories.tenant()
    journal = Journal(SECRET)
    for _ in range(50):
        journal.append(**journal_record(tenant))
    with journal_server(journal) as url:
        node = _node("node-a", url)
        result = usage_ingest_node(node, page_size=10, max_pages=2)
        assert (result.pages, result.inserted) == (2, 20)
        assert IngestCursor.objects.get(node_name="node-a").after_seq == 20
        assert UsageRecord.objects.count() == 20
        # The rest on the next run, from the cursor.
        rest = usage_ingest_node(node, page_size=10)
    assert rest.inserted == 30
    assert UsageRecord.objects.count() == 50
    assert IngestCursor.objects.get(node_name="node-a").after_seq == 50
