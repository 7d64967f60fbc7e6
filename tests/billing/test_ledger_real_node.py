"""Ledger integrity against a real inference node process and real signed requests.

Requests go through `wire.client` the way the gateway sends them; some streams are cut
off mid-way (billed for what they used). Ingestion then runs concurrently and again: the
ledger must equal the node's journal exactly, with no duplicates.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from django.db import close_old_connections
from django.db.models import Count, Sum

from billing.models import IngestCursor, UsageRecord, UsageRollup
from billing.services.ingestion import usage_ingest_all, usage_ingest_node
from gateway import services as gateway_services
from tests import factories
from tests.factories import plan_with_price, subscribe_directly
from tests.support.inference_node import inference_node
from wire.client import InferenceClient, usage_pull
from wire.context import SignedContext

SECRET = "billing-test-secret"
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


async def _send(base_url: str, contexts: list[tuple[SignedContext, bool, bool]]) -> None:
    """Each (context, stream, cut): sends one chat request; `cut` drops the stream after one chunk."""
    client = InferenceClient(pool_size=8)
    semaphore = asyncio.Semaphore(6)

    async def one(ctx: SignedContext, stream: bool, cut: bool) -> None:
        body = json.dumps(
            {"model": "demo-llama", "messages": [{"role": "user", "content": f"count to {len(ctx.request_id)}"}],
             "max_tokens": 24, "stream": stream}
        ).encode()  # fmt: skip
        async with semaphore:
            response = await client.open(base_url, "/v1/chat/completions", body, ctx, secret=SECRET, timeout=30)
            try:
                assert response.status == 200, await response.text()
                if cut:
                    await response.content.readany()
                    response.close()  # the client goes away mid-stream
                    return
                await response.read()
            finally:
                response.release()

    try:
        await asyncio.gather(*(one(ctx, stream, cut) for ctx, stream, cut in contexts))
    finally:
        await client.close()


def _journal(base_url: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = 0
    while True:
        page = usage_pull(base_url, SECRET, after=after, limit=500)
        records.extend(page["records"])
        after = page["next_after"]
        if not page["has_more"]:
            return records


def test_ledger_equals_journal_with_cut_streams_and_concurrent_ingestion(settings: Any) -> None:
    settings.INFERENCE_SHARED_SECRET = SECRET
    settings.BILLING_INGEST_PAGE_SIZE = 16
    tenants = [factories.tenant() for _ in range(3)]
    keys = [factories.inference_key(t)[0] for t in tenants]
    priced = plan_with_price(input_per_1m="0.300000", output_per_1m="1.200000")
    for tenant in tenants:
        subscribe_directly(tenant, priced.plan)
    contexts = []
    for i in range(36):
        index = i % 3
        ctx = SignedContext(tenant=tenants[index].pk, key=keys[index].pk, request_id=f"bill-{uuid.uuid4()}")
        contexts.append((ctx, i % 2 == 0, i % 6 == 0))
    with inference_node(secret=SECRET, INFERENCE_MAX_BATCH_SIZE="8") as node:
        asyncio.run(_send(node.base_url, contexts))
        # Aborted streams reach the journal when the node notices the disconnect.
        deadline = time.monotonic() + 30
        while len(_journal(node.base_url)) < len(contexts) and time.monotonic() < deadline:
            time.sleep(0.2)
        journal = _journal(node.base_url)
        assert len(journal) == len(contexts)
        registered = gateway_services.node_register(name="node-real", base_url=node.base_url, actor=factories.SYSTEM)
        errors: list[BaseException] = []

        def ingest() -> None:
            try:
                usage_ingest_node(registered)
            except BaseException as exc:
                errors.append(exc)
            finally:
                close_old_connections()

        threads = [threading.Thread(target=ingest) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        assert usage_ingest_all().inserted == 0  # a second pass finds nothing new
    assert any(r["outcome"] == "aborted" for r in journal)
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for record in journal:
        entry = expected[int(record["tenant"])]
        entry[0] += record["prompt_tokens"]
        entry[1] += record["completion_tokens"]
        entry[2] += 1
    ledger = {
        row["tenant_id"]: [row["p"], row["c"], row["n"]]
        for row in UsageRecord.objects.values("tenant_id").annotate(
            p=Sum("prompt_tokens"), c=Sum("completion_tokens"), n=Count("id")
        )
    }
    assert ledger == dict(expected)
    assert UsageRecord.objects.values("request_id").distinct().count() == len(journal)
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {c.request_id for c, _, _ in contexts}
    aborted = {r["request_id"]: r for r in journal if r["outcome"] == "aborted"}
    for row in UsageRecord.objects.filter(request_id__in=aborted):
        assert row.outcome == "aborted"
        assert row.completion_tokens == aborted[row.request_id]["completion_tokens"]
    assert IngestCursor.objects.get(node_name="node-real").after_seq == max(r["seq"] for r in journal)
    rolled = UsageRollup.objects.filter(bucket="day").aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"))
    assert rolled == {"i": sum(e[0] for e in expected.values()), "o": sum(e[1] for e in expected.values())}
