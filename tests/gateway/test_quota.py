"""Quota semantics, checked directly on both backends (in-process and Redis)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from gateway import quota
from gateway.quota import QuotaSubject, duration_text, period_now, usage_baseline_set
from tenants.types import EffectiveLimits


def scopes(
    key: EffectiveLimits, tenant: EffectiveLimits | None = None, *, key_id: int = 1, tenant_id: int = 1
) -> list[QuotaSubject]:
    return [QuotaSubject(f"key:{key_id}", key), QuotaSubject(f"tenant:{tenant_id}", tenant or EffectiveLimits())]


async def test_100_concurrent_against_20_rpm_admits_exactly_20(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(requests_per_minute=20))
    decisions = await asyncio.gather(*(quota_backend.admit(s, tokens=1) for _ in range(100)))
    admitted = [d for d in decisions if d.admitted]
    refused = [d for d in decisions if not d.admitted]
    assert len(admitted) == 20
    assert {d.code for d in refused} == {"rate_limit_exceeded"}
    assert {d.reason for d in refused} == {"requests"}
    # Refill is one request per 3 s: the next slot is about 3 s away.
    assert all(2000 <= d.retry_after_ms <= 3000 for d in refused)
    assert refused[0].headers()["retry-after"] == "3"
    assert refused[0].headers()["x-ratelimit-remaining-requests"] == "0"


async def test_tenant_limit_binds_across_keys(quota_backend: quota.QuotaBackend) -> None:
    tenant = EffectiveLimits(requests_per_minute=5)
    results = []
    for key_id in range(1, 11):  # ten keys with no limit of their own share the tenant's 5
        results.append(await quota_backend.admit(scopes(EffectiveLimits(), tenant, key_id=key_id), tokens=1))
    assert sum(d.admitted for d in results) == 5


async def test_headers_report_limits_remaining_and_reset(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(requests_per_minute=60, tokens_per_minute=1000))
    first = await quota_backend.admit(s, tokens=100)
    headers = first.headers()
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    # One request of 60/min drains in 1 s; 100 of 1000 tokens/min in 6 s.
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["x-ratelimit-reset-tokens"] == "6s"
    assert "retry-after" not in headers
    peek = await quota_backend.peek(s)
    assert 59 <= peek.remaining_requests <= 60
    assert 900 <= peek.remaining_tokens <= 901


async def test_tightest_scope_drives_headers(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(requests_per_minute=100), EffectiveLimits(requests_per_minute=10))
    d = await quota_backend.admit(s, tokens=1)
    assert d.headers()["x-ratelimit-limit-requests"] == "10"
    assert d.headers()["x-ratelimit-remaining-requests"] == "9"


async def test_token_reservation_and_settlement(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(tokens_per_minute=1000))
    first = await quota_backend.admit(s, tokens=600)
    assert first.admitted and first.remaining_tokens == 400
    # 600 reserved: a second request of 600 does not fit.
    second = await quota_backend.admit(s, tokens=600)
    assert not second.admitted and second.reason == "tokens" and second.code == "rate_limit_exceeded"
    # The first really used 100: settling frees 500.
    await quota_backend.settle(first, used_tokens=100)
    third = await quota_backend.admit(s, tokens=600)
    assert third.admitted
    assert 299 <= third.remaining_tokens <= 300
    # A request larger than the whole limit is refused as too large.
    huge = await quota_backend.admit(s, tokens=5000)
    assert not huge.admitted and huge.reason == "request_too_large"


async def test_concurrency_cap_and_release(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(max_concurrent_requests=2))
    a = await quota_backend.admit(s, tokens=1)
    b = await quota_backend.admit(s, tokens=1)
    c = await quota_backend.admit(s, tokens=1)
    assert a.admitted and b.admitted
    assert not c.admitted and c.reason == "concurrency" and c.headers()["retry-after"] == "1"
    await quota_backend.settle(a, used_tokens=1)
    d = await quota_backend.admit(s, tokens=1)
    assert d.admitted


async def test_concurrency_leases_expire(quota_backend: quota.QuotaBackend, settings: Any) -> None:
    """A gateway that crashed never settles; its lease runs out instead."""
    settings.GATEWAY_LEASE_TTL_S = 0.2
    s = scopes(EffectiveLimits(max_concurrent_requests=1))
    held = await quota_backend.admit(s, tokens=1)
    assert held.admitted
    assert not (await quota_backend.admit(s, tokens=1)).admitted
    await asyncio.sleep(0.3)
    assert (await quota_backend.admit(s, tokens=1)).admitted


async def test_renew_keeps_a_live_lease(quota_backend: quota.QuotaBackend, settings: Any) -> None:
    settings.GATEWAY_LEASE_TTL_S = 0.3
    s = scopes(EffectiveLimits(max_concurrent_requests=1))
    held = await quota_backend.admit(s, tokens=1)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await quota_backend.renew(held)
    assert not (await quota_backend.admit(s, tokens=1)).admitted


async def test_monthly_budget_is_a_hard_stop(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(), EffectiveLimits(monthly_token_budget=1000))
    used = 0
    while True:
        d = await quota_backend.admit(s, tokens=300)
        if not d.admitted:
            break
        await quota_backend.settle(d, used_tokens=250)
        used += 250
    # 3 x 250 used; a fourth reservation of 300 would pass the budget of 1000.
    assert used == 750
    assert d.code == "insufficient_quota" and d.reason == "monthly_tokens"
    assert d.headers()["retry-after"]
    last = await quota_backend.admit(s, tokens=250)  # exactly what is left
    assert last.admitted
    await quota_backend.settle(last, used_tokens=250)
    # The budget is spent: even one token is refused, and waiting does not help.
    again = await quota_backend.admit(s, tokens=1)
    assert not again.admitted and again.code == "insufficient_quota"


async def test_baseline_from_the_ledger_raises_the_counter(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(), EffectiveLimits(monthly_token_budget=10_000), key_id=7, tenant_id=3)
    d = await quota_backend.admit(s, tokens=100)
    await quota_backend.settle(d, used_tokens=100)
    # The ledger knows more (another gateway, an earlier process): the larger value wins.
    usage_baseline_set(tenant_id=3, key_id=None, period=period_now(), tokens=9_950, spend=Decimal("1.5"))
    refused = await quota_backend.admit(s, tokens=100)
    assert not refused.admitted and refused.reason == "monthly_tokens"
    # A smaller ledger value never lowers the live counter.
    usage_baseline_set(tenant_id=3, key_id=None, period=period_now(), tokens=10, spend=Decimal(0))
    assert not (await quota_backend.admit(s, tokens=100)).admitted
    assert (await quota_backend.admit(s, tokens=40)).admitted


async def test_spend_cap_stops_at_the_ledger_spend(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(monthly_spend_cap=Decimal("5.00")), key_id=9)
    assert (await quota_backend.admit(s, tokens=1)).admitted
    usage_baseline_set(tenant_id=1, key_id=9, period=period_now(), tokens=0, spend=Decimal("4.999999"))
    assert (await quota_backend.admit(s, tokens=1)).admitted
    usage_baseline_set(tenant_id=1, key_id=9, period=period_now(), tokens=0, spend=Decimal("5.000000"))
    refused = await quota_backend.admit(s, tokens=1)
    assert not refused.admitted and refused.code == "insufficient_quota" and refused.reason == "monthly_spend"


async def test_refused_admission_changes_nothing(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(requests_per_minute=10, tokens_per_minute=100, max_concurrent_requests=5))
    refused = await quota_backend.admit(s, tokens=500)  # too large: nothing may be counted
    assert not refused.admitted
    peek = await quota_backend.peek(s)
    assert peek.remaining_requests == 10 and peek.remaining_tokens == 100


async def test_refund_on_failure_releases_everything(quota_backend: quota.QuotaBackend) -> None:
    s = scopes(EffectiveLimits(requests_per_minute=10, tokens_per_minute=100, max_concurrent_requests=1))
    d = await quota_backend.admit(s, tokens=50)
    await quota_backend.settle(d, used_tokens=0, refund_request=True)
    peek = await quota_backend.peek(s)
    assert peek.remaining_requests == 10 and peek.remaining_tokens == 100
    assert (await quota_backend.admit(s, tokens=1)).admitted  # the lease went too


def test_baseline_period_is_validated() -> None:
    with pytest.raises(ValueError):
        usage_baseline_set(tenant_id=1, key_id=None, period="2026/01", tokens=1, spend=Decimal(0))


def test_duration_text() -> None:
    assert duration_text(20) == "20ms"
    assert duration_text(1500) == "1.5s"
    assert duration_text(6000) == "6s"
    assert duration_text(360_000) == "6m0s"
    assert duration_text(61_500) == "1m1.5s"


async def test_redis_pipe_reconnects_after_losing_its_connection(redis_url: str) -> None:
    backend = quota.RedisQuota(redis_url)
    backend.reset()
    s = scopes(EffectiveLimits(requests_per_minute=100), key_id=41, tenant_id=41)
    assert (await backend.admit(s, tokens=1)).admitted
    writer = backend._pipe._writer
    assert writer is not None
    writer.transport.abort()  # the connection drops (Redis restart, network)
    await asyncio.sleep(0.05)
    d = await backend.admit(s, tokens=1)  # a new connection, the script loaded again if needed
    assert d.admitted and d.remaining_requests == 98
    backend.reset()


async def test_pipelined_calls_keep_their_replies_apart(redis_url: str) -> None:
    """Many calls in one event-loop turn share a write; each gets its own reply."""
    backend = quota.RedisQuota(redis_url)
    backend.reset()
    limits = [EffectiveLimits(requests_per_minute=n) for n in range(10, 60)]
    decisions = await asyncio.gather(
        *(backend.admit(scopes(lim, key_id=100 + i, tenant_id=100 + i), tokens=1) for i, lim in enumerate(limits))
    )
    assert [d.limit_requests for d in decisions] == list(range(10, 60))
    assert [d.remaining_requests for d in decisions] == list(range(9, 59))
    backend.reset()
