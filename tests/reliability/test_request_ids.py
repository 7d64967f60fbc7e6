"""Client request ids reused within and across tenants, and a signed request replayed to the node."""

from __future__ import annotations

import http.client
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from billing.models import UsageRecord
from billing.services.ingestion import usage_ingest_all
from tests.e2e.support import control_plane
from tests.reliability.support import (
    Reply,
    chat,
    concurrent,
    gateway_env,
    journal_list,
    rid_new,
    tenant_add,
    world_make,
)
from tests.support.inference_node import InferenceNode
from wire.context import SignedContext
from wire.signing import sign_headers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EACH = 4  # requests per tenant under the one shared id
LIMITS = {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000}


def test_one_request_id_reused_by_two_tenants_serves_journals_and_bills_every_request_once_to_its_tenant(
    node: InferenceNode, settings: Any
) -> None:
    """Proves: when tenants A and B each send several requests at once under the SAME
    `x-request-id` (the same value for both tenants), every request is served with the client's id
    echoed and its own attempt id, the node journals each one (under its attempt id, the client's
    id as `client_request_id`), and after two ingestion runs the ledger has exactly one row per
    request, billed to the tenant that sent it, with `client_request_id` the shared id, and each
    tenant's token totals equal to the `usage` its clients saw."""
    a = world_make(node, **LIMITS)
    b = tenant_add(a, **LIMITS)
    shared = rid_new("dup")
    plan = [a] * EACH + [b] * EACH
    with control_plane(workers=2, env=gateway_env(node)) as cp:
        replies: list[Reply] = concurrent(
            [
                lambda w=w, n=3 + i % 3: chat(cp.base_url, w.raw, request_id=shared, max_tokens=n)
                for i, w in enumerate(plan)
            ]
        )
        settings.INFERENCE_SHARED_SECRET = node.secret
        for _ in range(2):
            result = usage_ingest_all()
            assert not result.errors, result.errors

    assert all(r.status == 200 for r in replies), [(r.status, r.body[:300]) for r in replies]
    assert all(r.headers.get("x-request-id") == shared for r in replies), [r.headers for r in replies]
    attempts = [r.headers.get("x-mmorch-attempt-id", "") for r in replies]
    assert all(attempts) and len(set(attempts)) == len(replies), attempts

    records = [rec for rec in journal_list(node) if rec["client_request_id"] == shared]
    assert sorted(rec["request_id"] for rec in records) == sorted(attempts)
    assert Counter(rec["tenant"] for rec in records) == {a.tenant.pk: EACH, b.tenant.pk: EACH}

    rows = list(UsageRecord.objects.filter(client_request_id=shared))
    assert sorted(row.request_id for row in rows) == sorted(attempts)  # one row per request, none twice
    for world, sent in ((a, replies[:EACH]), (b, replies[EACH:])):
        mine = [row for row in rows if row.tenant_id == world.tenant.pk]
        assert sorted(row.request_id for row in mine) == sorted(r.headers["x-mmorch-attempt-id"] for r in sent)
        seen = [r.json()["usage"] for r in sent]
        assert sum(row.prompt_tokens for row in mine) == sum(u["prompt_tokens"] for u in seen)
        assert sum(row.completion_tokens for row in mine) == sum(u["completion_tokens"] for u in seen)


def _post(base_url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_same_signed_bytes_sent_twice_to_the_node_are_served_once_then_refused_as_replayed(
    node: InferenceNode,
) -> None:
    """Proves: a request signed the way the gateway signs one (`wire.signing.sign_headers` with the
    node's secret over the body and the tenant context) and sent to the node twice, byte for byte,
    is served the first time (200), refused the second time with 401 `replayed_request`, and the
    node's journal holds its attempt exactly once."""
    a = world_make(node, **LIMITS)
    path = "/v1/chat/completions"
    body = orjson.dumps({"model": "demo-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    ctx = SignedContext(tenant=a.tenant.pk, key=a.key_id, request_id=str(uuid.uuid4()), client_request_id="replay-me")
    headers = sign_headers(node.secret, "POST", path, body, ctx) | {"content-type": "application/json"}

    first = _post(node.base_url, path, body, headers)
    second = _post(node.base_url, path, body, headers)

    assert first[0] == 200, first
    assert second[0] == 401, second
    assert orjson.loads(second[1])["error"]["code"] == "replayed_request", second
    assert [rec["request_id"] for rec in journal_list(node)].count(ctx.request_id) == 1
