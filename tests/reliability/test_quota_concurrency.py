"""100 requests at once through the real control plane, on both quota backends: the limits hold exactly."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.support import control_plane
from tests.reliability.support import (
    Reply,
    assert_openai_error,
    chat,
    concurrent,
    gateway_env,
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
