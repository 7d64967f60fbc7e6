"""100 requests at once through the real control plane, on both quota backends: rpm, concurrency, tpm,
the monthly token budget and the spend cap hold."""

from __future__ import annotations

import os
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from billing.services.ingestion import usage_ingest_all
from billing.services.spend import spend_feed_push
from tests import factories
from tests.e2e.support import control_plane
from tests.reliability.support import (
    Reply,
    assert_openai_error,
    chat,
    concurrent,
    gateway_env,
    journal,
    journal_wait,
    max_overlap,
    rid_new,
    world_make,
)
from tests.support.inference_node import InferenceNode

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REQUESTS = 100
RATE_LIMIT_HEADERS = (
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


@pytest.fixture(params=["memory", "redis"])
def backend_env(request: pytest.FixtureRequest) -> tuple[int, dict[str, str]]:
    """(workers, env): the in-process backend in one worker, or Redis shared by two workers."""
    if request.param == "memory":
        return 1, {"REDIS_URL": ""}
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        pytest.fail("REDIS_URL must be set: the Redis quota backend runs against a real Redis")
    return 2, {"REDIS_URL": redis_url}


def _burst(base_url: str, raw: str, *, max_tokens: int, prefix: str) -> list[Reply]:
    return list(
        concurrent(
            [
                lambda i=i: chat(base_url, raw, request_id=rid_new(f"{prefix}{i}"), max_tokens=max_tokens, timeout=90)
                for i in range(REQUESTS)
            ]
        )
    )


def _assert_rate_limited(replies: list[Reply]) -> None:
    for reply in replies:
        assert_openai_error(reply, 429, "rate_limit_exceeded")
        missing = [h for h in RATE_LIMIT_HEADERS if h not in reply.headers]
        assert not missing, (missing, reply.headers)
        assert int(reply.headers["retry-after"]) >= 1


def test_rpm_20_under_100_concurrent_requests_serves_exactly_20(
    node: InferenceNode, backend_env: tuple[int, dict[str, str]]
) -> None:
    """Proves: with a limit of 20 requests a minute, 100 requests sent at once through the real
    control plane get exactly 20 answers of 200 and 80 of 429 `rate_limit_exceeded` carrying
    Retry-After and the x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers, on the
    in-process backend (one worker) and on Redis (two workers sharing it); only the 20 reach the node."""
    workers, env = backend_env
    world = world_make(node, requests_per_minute=20, tokens_per_minute=10_000_000)
    with control_plane(workers=workers, env=gateway_env(node, **env)) as cp:
        replies = _burst(cp.base_url, world.raw, max_tokens=1, prefix="rpm")
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert len(served) == 20, sorted(r.status for r in replies)
    _assert_rate_limited(refused)
    assert all(r.headers["x-ratelimit-limit-requests"] == "20" for r in refused)
    assert all(r.headers["x-ratelimit-remaining-requests"] == "0" for r in refused)
    records = journal_wait(node, [r.request_id for r in served])
    assert all(r.request_id in records for r in served)
    assert not [r.request_id for r in refused if r.request_id in records]


def _moment(record: dict[str, Any], name: str) -> float:
    return datetime.fromisoformat(record[name]).timestamp()


def test_concurrency_cap_5_under_100_concurrent_requests_never_has_more_than_5_at_the_node(
    node: InferenceNode, backend_env: tuple[int, dict[str, str]]
) -> None:
    """Proves: with at most 5 concurrent requests allowed, 100 slow-ish requests sent at once never
    have more than 5 in flight at the node (measured from the node's journal: each request's
    arrival to its finish), at least 5 are served, and every other one gets a 429
    `rate_limit_exceeded` with Retry-After and the x-ratelimit-* headers, on both backends."""
    workers, env = backend_env
    world = world_make(node, requests_per_minute=100_000, tokens_per_minute=10_000_000, max_concurrent_requests=5)
    with control_plane(workers=workers, env=gateway_env(node, **env)) as cp:
        replies = _burst(cp.base_url, world.raw, max_tokens=40, prefix="conc")
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert len(served) >= 5, sorted(r.status for r in replies)
    _assert_rate_limited(refused)
    records = journal_wait(node, [r.request_id for r in served])
    assert all(r.request_id in records for r in served)
    assert not [r.request_id for r in refused if r.request_id in records]
    intervals = [(_moment(records[r.request_id], "started_at"), _moment(records[r.request_id], "finished_at"))
                 for r in served]  # fmt: skip
    assert max_overlap(intervals) <= 5, sorted(intervals)


BUDGET, TPM, MAX_TOKENS = 600, 600, 8


def _served_tokens(records: dict[str, dict[str, Any]], served: list[Reply]) -> list[int]:
    return [records[r.request_id]["prompt_tokens"] + records[r.request_id]["completion_tokens"] for r in served]


def test_monthly_token_budget_under_100_concurrent_requests_serves_at_most_the_budget(
    node: InferenceNode, backend_env: tuple[int, dict[str, str]]
) -> None:
    """Proves: with a monthly token budget of 600, 100 requests sent at once (max_tokens 8) are
    served only while the budget lasts: the tokens served (prompt + completion, from the node's
    journal) stay within the budget plus one request's max_tokens, every other request gets 429
    `insufficient_quota` and never reaches the node, on both backends (admission reserves the
    prompt's real token count, so the budget holds under concurrency)."""
    workers, env = backend_env
    world = world_make(node, requests_per_minute=100_000, tokens_per_minute=100_000_000, monthly_token_budget=BUDGET)
    with control_plane(workers=workers, env=gateway_env(node, **env)) as cp:
        replies = _burst(cp.base_url, world.raw, max_tokens=MAX_TOKENS, prefix="budget")
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert served and refused, sorted(r.status for r in replies)
    for reply in refused:
        assert_openai_error(reply, 429, "insufficient_quota")
    records = journal_wait(node, [r.request_id for r in served])
    assert all(r.request_id in records for r in served)
    assert not [r.request_id for r in refused if r.request_id in records]
    assert sum(_served_tokens(records, served)) <= BUDGET + MAX_TOKENS, _served_tokens(records, served)


def test_tpm_under_100_concurrent_requests_admits_at_most_the_limit_within_the_minute(
    node: InferenceNode, backend_env: tuple[int, dict[str, str]]
) -> None:
    """Proves: with 600 tokens a minute, 100 requests sent at once (max_tokens 8) admit no more
    tokens than the limit plus what the bucket drained during the burst plus one request's
    reservation (the tokens served, from the node's journal, are what was reserved: the demo
    model always generates max_tokens), and every other request gets 429 `rate_limit_exceeded`
    with Retry-After and the x-ratelimit-* headers and never reaches the node, on both backends."""
    workers, env = backend_env
    world = world_make(node, requests_per_minute=100_000, tokens_per_minute=TPM)
    with control_plane(workers=workers, env=gateway_env(node, **env)) as cp:
        replies = _burst(cp.base_url, world.raw, max_tokens=MAX_TOKENS, prefix="tpm")
    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status != 200]
    assert served and refused, sorted(r.status for r in replies)
    _assert_rate_limited(refused)
    records = journal_wait(node, [r.request_id for r in served])
    assert all(r.request_id in records for r in served)
    assert not [r.request_id for r in refused if r.request_id in records]
    tokens = _served_tokens(records, served)
    burst_s = max(r.ended_at for r in replies) - min(r.sent_at for r in replies)
    # The bucket drains continuously: TPM/60 tokens a second of burst are admissible on top.
    assert sum(tokens) <= TPM * (1 + burst_s / 60) + max(tokens), (sum(tokens), burst_s, tokens)


def test_spend_cap_reached_refuses_all_100_concurrent_requests_with_insufficient_quota(
    node: InferenceNode, backend_env: tuple[int, dict[str, str]], settings: Any
) -> None:
    """Proves: for a tenant on a plan priced at 1 per token with a monthly spend cap of 10, once a
    few requests have been served, ingested and the spend feed pushed
    (`billing.services.spend.spend_feed_push`; without Redis the serving process reads the ledger
    itself, `gateway.baselines`), 100 requests sent at once are all refused with 429
    `insufficient_quota` and none reaches the node, on both backends."""
    workers, env = backend_env
    if not env["REDIS_URL"]:
        # The in-process backend reads the ledger itself, at most this often (the feed's lag).
        env = {**env, "GATEWAY_LEDGER_BASELINE_S": "0.5"}
    priced = factories.plan_with_price(input_per_1m="1000000", output_per_1m="1000000")
    world = world_make(
        node, requests_per_minute=100_000, tokens_per_minute=100_000_000, monthly_spend_cap=Decimal("10")
    )
    factories.subscribe_directly(world.tenant, priced.plan)
    settings.INFERENCE_SHARED_SECRET = node.secret
    with control_plane(workers=workers, env=gateway_env(node, **env)) as cp:
        before = [chat(cp.base_url, world.raw, request_id=rid_new("spend"), max_tokens=4) for _ in range(3)]
        assert all(r.status == 200 for r in before), [(r.status, r.body[:300]) for r in before]
        journal_wait(node, [r.request_id for r in before])
        result = usage_ingest_all(feed=False)
        assert not result.errors, result.errors
        assert spend_feed_push(tenant_ids=[world.tenant.pk]) >= 1
        # The gateway learns the spend within its feed's lag (Redis: now; in-process: the next
        # ledger read); probe until the cap binds, then every concurrent request must be refused.
        deadline = time.monotonic() + 10
        probe = chat(cp.base_url, world.raw, request_id=rid_new("probe"), max_tokens=1)
        while probe.status == 200 and time.monotonic() < deadline:
            time.sleep(0.6)
            probe = chat(cp.base_url, world.raw, request_id=rid_new("probe"), max_tokens=1)
        assert_openai_error(probe, 429, "insufficient_quota")
        replies = _burst(cp.base_url, world.raw, max_tokens=MAX_TOKENS, prefix="capped")
    for reply in replies:
        assert_openai_error(reply, 429, "insufficient_quota")
    records = journal(node)
    assert not [r.request_id for r in replies if r.request_id in records]
