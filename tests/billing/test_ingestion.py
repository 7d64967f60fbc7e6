"""Ingestion: journal pages into the ledger with a cursor, idempotently, priced, rolled up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.db import close_old_connections
from django.db.models import Count, Sum

from billing.models import Bucket, ImmutableRowError, IngestCursor, UsageRecord, UsageRollup
from billing.services.ingestion import usage_ingest_all, usage_ingest_node
from billing.services.rollups import usage_rollups_rebuild
from gateway import services as gateway_services
from tests import factories
from tests.billing.journal_server import Journal, journal_server
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

SECRET = "dev-inference-secret"
pytestmark = pytest.mark.django_db


def _ledger_sums() -> dict[int, tuple[int, int, int]]:
    return {
        row["tenant_id"]: (row["p"], row["c"], row["n"])
        for row in UsageRecord.objects.values("tenant_id").annotate(
            p=Sum("prompt_tokens"), c=Sum("completion_tokens"), n=Count("id")
        )
    }


def _journal_sums(records: list[dict[str, Any]]) -> dict[int, tuple[int, int, int]]:
    sums: dict[int, list[int]] = {}
    seen: set[str] = set()
    for r in records:
        if r["request_id"] in seen:
            continue
        seen.add(r["request_id"])
        entry = sums.setdefault(int(r["tenant"]), [0, 0, 0])
        entry[0] += r["prompt_tokens"]
        entry[1] += r["completion_tokens"]
        entry[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in sums.items()}


def _node(name: str, url: str) -> Any:
    return gateway_services.node_register(name=name, base_url=url, actor=factories.SYSTEM)


@pytest.mark.django_db(transaction=True)
def test_ingest_twice_and_concurrently_matches_journal(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    settings.BILLING_INGEST_PAGE_SIZE = 37  # many pages, odd size
    t1, t2 = factories.tenant(), factories.tenant()
    priced = plan_with_price(input_per_1m="0.150000", output_per_1m="0.600000")
    subscribe_directly(t1, priced.plan)
    journal = Journal(SECRET)
    for i in range(400):
        tenant = t1 if i % 3 else t2
        outcome = "aborted" if i % 7 == 0 else "stop"
        journal.append(**journal_record(tenant, prompt=5 + i % 11, completion=(i % 13) if outcome == "aborted" else 30))
    # A repeated delivery of the same request must count once.
    journal.append(**{**journal.records[5], "seq": 0})
    with journal_server(journal) as url:
        node = _node("node-a", url)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                usage_ingest_node(node)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                close_old_connections()

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        second = usage_ingest_all()
    assert second.inserted == 0
    assert _ledger_sums() == _journal_sums(journal.records)
    assert UsageRecord.objects.count() == 400
    cursor = IngestCursor.objects.get(node_name="node-a")
    assert cursor.after_seq == journal.records[-1]["seq"]
    assert cursor.records_total == 400
    # Aborted requests are in the ledger with what they used.
    aborted = UsageRecord.objects.filter(outcome="aborted")
    assert aborted.count() == len([r for r in journal.records[:400] if r["outcome"] == "aborted"])
    # Costs: t1 is priced, t2 has no plan and costs nothing.
    t1_cost = UsageRecord.objects.filter(tenant=t1).aggregate(s=Sum("cost"))["s"]
    p, c, _ = _ledger_sums()[t1.pk]
    assert t1_cost == Decimal(p) * Decimal("0.15") / 1_000_000 + Decimal(c) * Decimal("0.6") / 1_000_000
    assert UsageRecord.objects.filter(tenant=t2).aggregate(s=Sum("cost"))["s"] == 0
    # Rollups hold exactly the ledger, per bucket kind.
    for bucket in (Bucket.HOUR, Bucket.DAY):
        rolled = UsageRollup.objects.filter(bucket=bucket).aggregate(
            n=Sum("requests"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost")
        )
        ledger = UsageRecord.objects.aggregate(
            n=Count("id"), i=Sum("prompt_tokens"), o=Sum("completion_tokens"), c=Sum("cost")
        )
        assert rolled == ledger


def test_command_ingests_every_node_and_survives_a_dead_one(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    tenant = factories.tenant()
    journal = Journal(SECRET)
    for _ in range(5):
        journal.append(**journal_record(tenant))
    with journal_server(journal) as url:
        _node("node-up", url)
        _node("node-gone", "http://127.0.0.1:9")  # nothing listens there
        call_command("ingest_usage")
    assert UsageRecord.objects.filter(node_name="node-up").count() == 5
    assert IngestCursor.objects.get(node_name="node-gone").after_seq == 0


def test_bad_records_are_skipped_and_do_not_block_the_cursor(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    tenant = factories.tenant()
    journal = Journal(SECRET)
    journal.append(**journal_record(tenant))
    journal.append(**{**journal_record(tenant), "prompt_tokens": -3})
    journal.append(**{**journal_record(tenant), "tenant": "999999"})  # unknown tenant
    journal.append(**{**journal_record(tenant), "outcome": "exploded"})
    journal.append(**journal_record(tenant))
    with journal_server(journal) as url:
        result = usage_ingest_node(_node("node-b", url))
    assert (result.inserted, result.rejected) == (2, 3)
    assert IngestCursor.objects.get(node_name="node-b").after_seq == 5


def test_price_applies_from_its_date_by_request_start() -> None:
    tenant = factories.tenant()
    change = datetime(2026, 3, 15, 12, tzinfo=UTC)
    priced = plan_with_price(input_per_1m="1", output_per_1m="1", effective_from=datetime(2026, 1, 1, tzinfo=UTC))
    priced.plan.prices.create(
        model_name="demo-llama", input_per_1m=Decimal("3"), output_per_1m=Decimal("5"), effective_from=change
    )
    subscribe_directly(tenant, priced.plan)
    before = journal_record(tenant, prompt=1_000_000, completion=0, at=change - timedelta(seconds=1))
    after = journal_record(tenant, prompt=1_000_000, completion=1_000_000, at=change)
    assert ledger_add([before, after]) == 2
    assert UsageRecord.objects.get(request_id=before["request_id"]).cost == Decimal(1)
    assert UsageRecord.objects.get(request_id=after["request_id"]).cost == Decimal(8)
    # Unknown model under the plan: recorded at zero, never dropped.
    other = journal_record(tenant, model="unpriced-model")
    ledger_add([other])
    assert UsageRecord.objects.get(request_id=other["request_id"]).cost == 0


def test_ledger_rows_are_immutable() -> None:
    tenant = factories.tenant()
    record = journal_record(tenant)
    ledger_add([record])
    row = UsageRecord.objects.get(request_id=record["request_id"])
    row.prompt_tokens = 1
    with pytest.raises(ImmutableRowError):
        row.save()
    with pytest.raises(ImmutableRowError):
        row.delete()


def test_rollup_rebuild_equals_incremental_rollups() -> None:
    t1, t2 = factories.tenant(), factories.tenant()
    key, _ = factories.inference_key(t1)
    priced = plan_with_price(input_per_1m="0.5", output_per_1m="1.5")
    subscribe_directly(t1, priced.plan)
    base = datetime(2026, 2, 27, 22, tzinfo=UTC)
    records = [
        journal_record(
            t1 if i % 2 else t2,
            key=key.pk if i % 4 == 1 else None,
            at=base + timedelta(minutes=17 * i),
            model="demo-llama" if i % 5 else "other",
            prompt=i,
            completion=2 * i,
        )
        for i in range(60)
    ]
    ledger_add(records)
    snapshot = sorted(
        UsageRollup.objects.values_list(
            "bucket",
            "bucket_start",
            "tenant_id",
            "key_id",
            "model_name",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost",
        )
    )
    UsageRollup.objects.all().delete()
    written = usage_rollups_rebuild(start=base, end=base + timedelta(days=2))
    assert written == len(snapshot)
    rebuilt = sorted(
        UsageRollup.objects.values_list(
            "bucket",
            "bucket_start",
            "tenant_id",
            "key_id",
            "model_name",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost",
        )
    )
    assert rebuilt == snapshot
    # The hourly buckets are hour-aligned and keyed rows carry the key id.
    assert UsageRollup.objects.filter(key_id=key.pk, bucket=Bucket.HOUR).exists()
    assert all(r.bucket_start.minute == 0 for r in UsageRollup.objects.filter(bucket=Bucket.HOUR))


def test_queries_per_page_do_not_grow_with_the_page() -> None:
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    tenants = [factories.tenant() for _ in range(12)]
    priced = plan_with_price()
    for tenant in tenants:
        subscribe_directly(tenant, priced.plan)
    counts = []
    for size in (5, 400):
        records = [journal_record(tenants[i % len(tenants)], prompt=i, completion=i) for i in range(size)]
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            assert ledger_add(records, node="node-q") == size
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 12


def test_rollups_rebuild_command() -> None:
    from io import StringIO

    from django.core.management import CommandError

    tenant = factories.tenant()
    ledger_add([journal_record(tenant, prompt=7, completion=3, at=datetime(2026, 4, 2, 10, tzinfo=UTC))])
    UsageRollup.objects.all().delete()
    for bad in (["--start", "2026-04-31", "--end", "2026-05-01"], ["--start", "2026-04-02", "--end", "2026-04-01"]):
        with pytest.raises(CommandError):
            call_command("rollups_rebuild", *bad)
    assert not UsageRollup.objects.exists()
    out = StringIO()
    call_command("rollups_rebuild", "--start", "2026-04-01", "--end", "2026-04-03", stdout=out)
    assert "rollup rows written: 2" in out.getvalue()
    day = UsageRollup.objects.get(bucket=Bucket.DAY)
    assert (day.input_tokens, day.output_tokens, day.requests) == (7, 3, 1)


def test_attempts_sharing_a_client_id_are_each_billed(settings: Any) -> None:
    """A reused x-request-id never makes two requests one, nor swallows another tenant's usage."""
    settings.INFERENCE_SHARED_SECRET = SECRET
    mine, theirs = factories.tenant(), factories.tenant()
    journal = Journal(SECRET)
    for i in range(5):
        journal.append(**journal_record(mine, prompt=3, completion=4, request_id=f"att-{i}", client_request_id="same"))
    journal.append(**journal_record(theirs, prompt=2, completion=2, request_id="att-t", client_request_id="same"))
    # A version 1 record (one id, the client's) from a node not yet upgraded.
    legacy = {**journal_record(mine, prompt=1, completion=1, request_id="old-id"), "version": 1}
    del legacy["client_request_id"]
    journal.append(**legacy)
    with journal_server(journal) as url:
        result = usage_ingest_node(_node("node-c", url))
        assert result.inserted == 7
        assert usage_ingest_node(_node("node-c", url)).inserted == 0  # fetched again: nothing twice
    rows = UsageRecord.objects.filter(client_request_id="same")
    assert rows.count() == 6
    assert _ledger_sums()[mine.id] == (5 * 3 + 1, 5 * 4 + 1, 6)
    assert _ledger_sums()[theirs.id] == (2, 2, 1)
    assert UsageRecord.objects.get(request_id="old-id").client_request_id == "old-id"


def test_the_migration_gives_existing_rows_their_own_id_as_client_id() -> None:
    import importlib

    from django.apps import apps as global_apps
    from django.db import connection

    migration = importlib.import_module("billing.migrations.0003_usage_client_request_id")
    tenant = factories.tenant()
    ledger_add([journal_record(tenant, request_id="before-1"), journal_record(tenant, request_id="before-2")])
    UsageRecord.objects.filter(tenant=tenant).update(client_request_id="")  # as the column was added
    with connection.schema_editor() as editor:
        migration.client_ids_fill(global_apps, editor)
    assert dict(UsageRecord.objects.filter(tenant=tenant).values_list("request_id", "client_request_id")) == {
        "before-1": "before-1",
        "before-2": "before-2",
    }


def test_attribution_trace_and_engine_time_reach_the_ledger() -> None:
    tenant = factories.tenant()
    tagged = {
        **journal_record(tenant, request_id="tagged-1"),
        "end_user": "user-42",
        "metadata": {"team": "search", "feature": "autocomplete"},
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "engine_ms": 17.5,
    }
    assert ledger_add([tagged, journal_record(tenant, request_id="plain-2")]) == 2
    rows = {
        row.request_id: (row.end_user, row.metadata, row.trace_id, row.engine_ms)
        for row in UsageRecord.objects.filter(tenant=tenant)
    }
    assert rows == {
        "tagged-1": ("user-42", {"team": "search", "feature": "autocomplete"}, tagged["trace_id"], 17.5),
        "plain-2": ("", {}, "", 0.0),
    }
    # The tags are queryable as JSON (what the usage API's metadata filter relies on).
    assert UsageRecord.objects.filter(tenant=tenant, metadata__team="search").count() == 1
