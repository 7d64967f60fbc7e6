"""Calendar edges, on a frozen clock: the first instant of a month, its last second, 29 February,
New Year's Eve, and a tenant whose local day is not UTC's.

Billing periods, rollup buckets, the gateway's quota month and the dashboard's day ranges are all
UTC by design (DESIGN.md: "A billing period is a calendar month in UTC"): a tenant in Los Angeles
whose evening of 31 March is already 1 April in UTC is billed for that request in April.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.conf import settings
from django.test import Client

from billing.models import Invoice, UsageRollup
from billing.money import month_next, month_start, period_label, period_parse
from billing.services.invoices import billing_run
from billing.services.rollups import day_floor, hour_floor
from core.errors import ValidationFailed
from gateway import quota
from tenants.permissions import Role
from tenants.types import EffectiveLimits
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

LAST_SECOND_OF_YEAR = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
NEW_YEAR = datetime(2027, 1, 1, tzinfo=UTC)
LEAP_DAY = datetime(2028, 2, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "start", "following", "label"),
    [
        (
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            "2026-03",
        ),
        (
            datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            "2026-03",
        ),
        (LEAP_DAY, datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC), "2028-02"),
        (LAST_SECOND_OF_YEAR, datetime(2026, 12, 1, tzinfo=UTC), NEW_YEAR, "2026-12"),
        (NEW_YEAR, NEW_YEAR, datetime(2027, 2, 1, tzinfo=UTC), "2027-01"),
        # 23:30 on 31 March in Los Angeles is 06:30 on 1 April in UTC: April's period.
        (
            datetime(2026, 3, 31, 23, 30, tzinfo=ZoneInfo("America/Los_Angeles")),
            datetime(2026, 4, 1, tzinfo=UTC),
            datetime(2026, 5, 1, tzinfo=UTC),
            "2026-04",
        ),
    ],
)
def test_billing_period_of_a_moment(moment: datetime, start: datetime, following: datetime, label: str) -> None:
    assert month_start(moment) == start
    assert month_next(start) == following
    assert period_label(start) == label
    assert period_parse(label) == (start, following)


def test_february_of_a_leap_year_has_29_days() -> None:
    start, end = period_parse("2028-02")
    assert (end - start).days == 29
    start, end = period_parse("2027-02")
    assert (end - start).days == 28


@pytest.mark.parametrize(
    ("moment", "day", "hour"),
    [
        (LAST_SECOND_OF_YEAR, datetime(2026, 12, 31, tzinfo=UTC), datetime(2026, 12, 31, 23, tzinfo=UTC)),
        (NEW_YEAR, NEW_YEAR, NEW_YEAR),
        (LEAP_DAY, datetime(2028, 2, 29, tzinfo=UTC), LEAP_DAY),
        (
            datetime(2026, 3, 31, 23, 30, tzinfo=ZoneInfo("America/Los_Angeles")),
            datetime(2026, 4, 1, tzinfo=UTC),
            datetime(2026, 4, 1, 6, tzinfo=UTC),
        ),
    ],
)
def test_rollup_buckets_are_utc_days_and_hours(moment: datetime, day: datetime, hour: datetime) -> None:
    assert day_floor(moment) == day
    assert hour_floor(moment) == hour


def test_quota_month_turns_at_midnight_utc() -> None:
    # The month is cached by its bounds: the first request of a month never counts against the
    # last one, even a microsecond after it (and a clock stepped back is followed too).
    with time_machine.travel(LAST_SECOND_OF_YEAR, tick=False) as traveller:
        assert quota.period_now() == "2026-12"
        traveller.move_to(NEW_YEAR)
        assert quota.period_now() == "2027-01"
        traveller.move_to(LEAP_DAY)
        assert quota.period_now() == "2028-02"
        traveller.move_to(datetime(2028, 2, 29, 23, 59, 59, 999999, tzinfo=UTC))
        assert quota.period_now() == "2028-02"
        traveller.move_to(datetime(2028, 3, 1, tzinfo=UTC))
        assert quota.period_now() == "2028-03"
        traveller.move_to(LAST_SECOND_OF_YEAR)
        assert quota.period_now() == "2026-12"


@pytest.fixture(params=["memory", "redis"])
def quota_backend(request: pytest.FixtureRequest) -> Iterator[quota.QuotaBackend]:
    backend: quota.QuotaBackend = (
        quota.MemoryQuota() if request.param == "memory" else quota.RedisQuota(settings.REDIS_URL or "")
    )
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set")
    backend.reset()
    yield backend
    backend.reset()


async def test_monthly_token_budget_starts_again_on_the_first(quota_backend: quota.QuotaBackend) -> None:
    limits = EffectiveLimits(monthly_token_budget=100)
    subjects = [quota.QuotaSubject("key:9001", limits), quota.QuotaSubject("tenant:9001", EffectiveLimits())]
    with time_machine.travel(LAST_SECOND_OF_YEAR - timedelta(seconds=1), tick=False) as traveller:
        first = await quota_backend.admit(subjects, tokens=100)
        assert first.admitted
        await quota_backend.settle(first, used_tokens=100)
        spent = await quota_backend.admit(subjects, tokens=1)
        assert not spent.admitted and spent.reason == "monthly_tokens"
        traveller.move_to(NEW_YEAR)
        fresh = await quota_backend.admit(subjects, tokens=100)
        assert fresh.admitted, "January's budget is untouched by December's use"
        await quota_backend.settle(fresh, used_tokens=100)


@pytest.mark.django_db
def test_the_last_microsecond_of_december_is_billed_in_december_and_the_next_in_january() -> None:
    tenant, _ = factories.tenant_with_members(roles=[Role.OWNER])
    priced = plan_with_price(input_per_1m="1.0", output_per_1m="2.0")
    subscribe_directly(tenant, priced.plan)
    ledger_add(
        [
            journal_record(tenant, prompt=1_000_000, completion=0, at=LAST_SECOND_OF_YEAR),
            journal_record(tenant, prompt=3_000_000, completion=0, at=NEW_YEAR),
        ]
    )
    days = {r.bucket_start: r.input_tokens for r in UsageRollup.objects.filter(tenant=tenant, bucket="day")}
    assert days == {datetime(2026, 12, 31, tzinfo=UTC): 1_000_000, NEW_YEAR: 3_000_000}
    with time_machine.travel(NEW_YEAR + timedelta(hours=2), tick=False):
        billing_run(period="2026-12")
    december = Invoice.objects.get(tenant=tenant, period_start=datetime(2026, 12, 1, tzinfo=UTC))
    assert december.period_end == NEW_YEAR
    # 1M input tokens at 1.00 per 1M: December holds exactly the last-microsecond request.
    assert december.subtotal_minor == 100
    with (
        time_machine.travel(datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC), tick=False),
        pytest.raises(ValidationFailed, match="has not ended yet"),
    ):
        billing_run(period="2027-01")
    with time_machine.travel(datetime(2027, 2, 1, tzinfo=UTC), tick=False):
        billing_run(period="2027-01")
    january = Invoice.objects.get(tenant=tenant, period_start=NEW_YEAR)
    assert january.subtotal_minor == 300


@pytest.mark.django_db
def test_the_dashboard_day_range_is_utc_whatever_the_tenants_local_day() -> None:
    tenant, users = factories.tenant_with_members(roles=[Role.OWNER])
    la = ZoneInfo("America/Los_Angeles")
    # Both are "31 March" in Los Angeles; the second is already 1 April in UTC.
    ledger_add(
        [
            journal_record(tenant, prompt=10, completion=1, at=datetime(2026, 3, 31, 12, 0, tzinfo=la)),
            journal_record(tenant, prompt=20, completion=2, at=datetime(2026, 3, 31, 23, 30, tzinfo=la)),
        ]
    )
    client = Client()
    client.force_login(users[Role.OWNER])
    with time_machine.travel(datetime(2026, 4, 2, 12, tzinfo=UTC), tick=False):
        march_31 = client.get(f"/t/{tenant.slug}/usage/", {"start": "2026-03-31", "end": "2026-03-31"})
        april_1 = client.get(f"/t/{tenant.slug}/usage/", {"start": "2026-04-01", "end": "2026-04-01"})
    assert march_31.status_code == 200 and april_1.status_code == 200
    assert sum(r.input_tokens for r in march_31.context["rows"]) == 10
    assert sum(r.input_tokens for r in april_1.context["rows"]) == 20
