"""Poison requests from one tenant interleaved with another tenant's normal traffic, on two nodes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from billing.models import UsageRecord
from billing.services.ingestion import usage_ingest_all
from tests.e2e.support import control_plane
from tests.reliability.support import (
    Reply,
    assert_openai_error,
    chat,
    gateway_env,
    journal_list,
    node_add,
    rid_new,
    tenant_add,
    world_make,
)
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

POISON_THREADS, POISON_EACH = 3, 8
NORMAL_THREADS, NORMAL_EACH = 2, 10
AFTER_POISON = 8  # B's requests once A is done: still served, still by both nodes
# The demo model's chat template refuses a conversation that opens with the assistant.
POISON = [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def second_node() -> Iterator[InferenceNode]:
    with inference_node(secret=DEFAULT_SECRET, INFERENCE_MAX_BATCH_SIZE="24") as running:
        yield running


def test_poison_requests_of_one_tenant_fail_alone_and_take_no_node_out_of_rotation(
    node: InferenceNode, second_node: InferenceNode, settings: Any
) -> None:
    """Proves: while tenant A sends a stream of poison chat requests (first message from the
    assistant, which the model's chat template refuses) from 3 threads and tenant B sends normal
    requests from 2 threads, through the real control plane to two nodes serving the model: every
    one of B's requests is a 200, A gets only 400s naming `messages` (and possibly 429s from its
    own throttle), neither node is taken out of rotation (B's requests, during and after the
    poison, land on both nodes), and after ingestion nothing at all is journaled or billed for A."""
    a = world_make(node, requests_per_minute=100_000, tokens_per_minute=100_000_000)
    node_add(a, second_node, node_name="node-b")
    b = tenant_add(a, requests_per_minute=100_000, tokens_per_minute=100_000_000)
    poison: list[Reply] = []
    normal: list[Reply] = []
    lock = threading.Lock()

    def send(world: Any, out: list[Reply], count: int, prefix: str, messages: Any) -> None:
        for _ in range(count):
            reply = chat(
                cp.base_url, world.raw, request_id=rid_new(prefix), max_tokens=3, messages=messages, timeout=30
            )
            with lock:
                out.append(reply)

    with control_plane(workers=2, env=gateway_env(node)) as cp:
        threads = [
            threading.Thread(target=send, args=(a, poison, POISON_EACH, "poison", POISON), daemon=True)
            for _ in range(POISON_THREADS)
        ] + [
            threading.Thread(target=send, args=(b, normal, NORMAL_EACH, "normal", None), daemon=True)
            for _ in range(NORMAL_THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after: list[Reply] = []
        send(b, after, AFTER_POISON, "after", None)

        settings.INFERENCE_SHARED_SECRET = node.secret
        result = usage_ingest_all()
        assert not result.errors, result.errors

    assert len(poison) == POISON_THREADS * POISON_EACH and len(normal) == NORMAL_THREADS * NORMAL_EACH
    assert all(r.status == 200 for r in normal + after), [(r.status, r.body[:300]) for r in normal + after]
    refused_400 = [r for r in poison if r.status == 400]
    assert refused_400, [(r.status, r.body[:300]) for r in poison]
    for reply in poison:
        if reply.status == 400:
            assert assert_openai_error(reply, 400)["param"] == "messages", reply.body[:300]
        else:
            assert_openai_error(reply, 429, "rate_limit_exceeded")

    journals = {"node-a": journal_list(node), "node-b": journal_list(second_node)}
    b_ids = {r.request_id for r in normal + after}
    for name, records in journals.items():
        assert any(rec["client_request_id"] in b_ids for rec in records), f"{name} served none of B's requests"
        assert not [rec for rec in records if rec["tenant"] == a.tenant.pk], f"{name} journaled A's poison"
    assert not UsageRecord.objects.filter(tenant=a.tenant).exists()
    billed_b = set(UsageRecord.objects.filter(tenant=b.tenant).values_list("client_request_id", flat=True))
    assert billed_b == b_ids
