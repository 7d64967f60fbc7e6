"""Without Redis the serving process reads month-to-date usage from the ledger itself, so the
spend cap binds although the spend feed runs in another process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from gateway import baselines, quota
from gateway.baselines import Baseline
from tenants.types import EffectiveLimits

CAPPED = EffectiveLimits(monthly_spend_cap=Decimal("10"))


def subjects(tenant_id: int) -> list[quota.QuotaSubject]:
    key = quota.QuotaSubject(f"key:{100 + tenant_id}", EffectiveLimits())
    return [key, quota.QuotaSubject(f"tenant:{tenant_id}", CAPPED)]


@dataclass
class FakeLedger:
    """Stands in for billing's month-to-date figures, read through the registered source."""

    spend: dict[int, Decimal] = field(default_factory=dict)
    reads: list[int] = field(default_factory=list)

    def __call__(self, tenant_ids: Iterable[int]) -> list[Baseline]:
        ids = list(tenant_ids)
        self.reads.extend(ids)
        return [Baseline(t, None, 0, self.spend[t]) for t in ids if t in self.spend]


@pytest.fixture
def ledger() -> Iterator[FakeLedger]:
    fake = FakeLedger()
    previous = baselines._source
    baselines.baseline_source_register(fake)
    yield fake
    baselines.baseline_source_register(previous)


async def test_a_burst_on_a_cold_process_waits_for_one_ledger_read_and_is_refused(ledger: FakeLedger) -> None:
    ledger.spend[7] = Decimal("10")
    backend = quota.MemoryQuota()
    decisions = await asyncio.gather(*(backend.admit(subjects(7), tokens=1) for _ in range(100)))
    assert {(d.admitted, d.reason) for d in decisions} == {(False, "monthly_spend")}
    assert ledger.reads == [7]  # one read for the whole burst


async def test_new_spend_is_read_again_after_the_interval(ledger: FakeLedger) -> None:
    ledger.spend[8] = Decimal("2")
    backend = quota.MemoryQuota()
    backend._ledger._interval_s = 0.05
    assert (await backend.admit(subjects(8), tokens=1)).admitted
    ledger.spend[8] = Decimal("12")
    assert (await backend.admit(subjects(8), tokens=1)).admitted  # within the interval: not read again
    assert ledger.reads == [8]
    await asyncio.sleep(0.1)
    assert (await backend.admit(subjects(8), tokens=1)).admitted  # starts the read, does not wait for it
    for _ in range(100):
        if not backend._ledger._tasks:
            break
        await asyncio.sleep(0.01)
    assert ledger.reads == [8, 8]
    refused = await backend.admit(subjects(8), tokens=1)
    assert not refused.admitted and refused.reason == "monthly_spend"


async def test_a_failing_ledger_read_admits_and_is_not_retried_per_request(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken(tenant_ids: Iterable[int]) -> list[Baseline]:
        calls.extend(tenant_ids)
        raise RuntimeError("database unreachable")

    previous = baselines._source
    baselines.baseline_source_register(broken)
    try:
        backend = quota.MemoryQuota()
        for _ in range(5):
            assert (await backend.admit(subjects(9), tokens=1)).admitted
    finally:
        baselines.baseline_source_register(previous)
    assert calls == [9]
    assert "reading month-to-date usage for tenant 9 failed" in caplog.text
