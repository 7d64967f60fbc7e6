"""Ingestion of several nodes at once, the page prefetch within one node, the price book kept across pages."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Count, Sum
from django.utils import timezone

from billing.models import Bucket, IngestCursor, UsageRecord, UsageRollup
from billing.pricing import PriceBookCache
from billing.services.ingestion import usage_ingest_all, usage_ingest_node
from gateway import services as gateway_services
from tenants.models import Tenant
from tests import factories
from tests.billing.journal_server import Journal, journal_server
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

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


@pytest.mark.django_db
def test_a_cached_price_book_serves_only_what_it_is_complete_for(django_assert_num_queries: Any) -> None:
    tenant = factories.tenant()
    priced = plan_with_price(input_per_1m="1.000000", output_per_1m="2.000000")
    subscribe_directly(tenant, priced.plan)
    now = timezone.now()
    cache = PriceBookCache()
    book, known = cache.book_for({tenant.pk}, now - timedelta(hours=1))
    assert known == {tenant.pk}
    assert book.lookup(tenant.pk, "demo-llama", now - timedelta(hours=1)).input_per_1m == Decimal("1.000000")
    # Requests that started before the book was loaded: the same book, no query.
    with django_assert_num_queries(0):
        again, _ = cache.book_for({tenant.pk}, now - timedelta(minutes=5))
    assert again is book
    # A price from a moment after the load (never backdated) and a request after it: a new book.
    later = timezone.now() + timedelta(seconds=30)
    priced.plan.prices.create(
        model_name="demo-llama", input_per_1m=Decimal("5"), output_per_1m=Decimal("6"), effective_from=later
    )
    fresh, _ = cache.book_for({tenant.pk}, later + timedelta(seconds=1))
    assert fresh is not book
    assert fresh.lookup(tenant.pk, "demo-llama", later + timedelta(seconds=1)).input_per_1m == Decimal("5")
    # A tenant unknown once is looked up again, never remembered as unknown.
    missing = Tenant.objects.order_by("-id").values_list("id", flat=True)[0] + 1000
    _, known = cache.book_for({tenant.pk, missing}, now - timedelta(hours=1))
    assert known == {tenant.pk}
    Tenant.objects.create(id=missing, slug="late-tenant", name="Late")
    _, known = cache.book_for({missing}, now - timedelta(hours=1))
    assert known == {missing}


@pytest.mark.django_db
def test_metadata_of_any_script_reaches_the_ledger_as_sent() -> None:
    tenant = factories.tenant()
    tags = {"équipe": "naïve ✓", "quote": 'a "b" \\ c', "emoji": "🚀"}
    assert ledger_add([{**journal_record(tenant, request_id="tags-1"), "metadata": tags}]) == 1
    assert UsageRecord.objects.get(request_id="tags-1").metadata == tags
    assert UsageRecord.objects.filter(metadata__emoji="🚀").count() == 1
