"""The spend feed: month-to-date tokens and spend from the ledger into the gateway's quota counters."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from billing.models import Bucket, UsageRollup
from billing.money import month_next, month_start, period_label
from gateway.baselines import Baseline

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MonthToDate:
    tenant_id: int
    key_id: int | None  # None: the whole tenant
    tokens: int
    spend: Decimal


def month_to_date(*, tenant_ids: Iterable[int], now: datetime | None = None) -> list[MonthToDate]:
    """Totals per tenant and per key for the month containing `now`, from the daily rollups."""
    start = month_start(now or timezone.now())
    rows = (
        UsageRollup.objects.filter(
            bucket=Bucket.DAY,
            bucket_start__gte=start,
            bucket_start__lt=month_next(start),
            tenant_id__in=set(tenant_ids),
        )
        .values("tenant_id", "key_id")
        .annotate(inp=Sum("input_tokens"), out=Sum("output_tokens"), cost=Sum("cost"))
        .order_by("tenant_id", "key_id")
    )
    per_tenant: dict[int, MonthToDate] = {}
    result: list[MonthToDate] = []
    for row in rows:
        tokens = int(row["inp"] or 0) + int(row["out"] or 0)
        spend = row["cost"] or Decimal(0)
        if row["key_id"]:
            result.append(MonthToDate(row["tenant_id"], row["key_id"], tokens, spend))
        prev = per_tenant.get(row["tenant_id"])
        per_tenant[row["tenant_id"]] = MonthToDate(
            row["tenant_id"], None, tokens + (prev.tokens if prev else 0), spend + (prev.spend if prev else 0)
        )
    return list(per_tenant.values()) + result


def month_to_date_baselines(tenant_ids: Iterable[int]) -> list[Baseline]:
    """The gateway's in-process backend reads the ledger through this (registered at start-up)."""
    return [Baseline(m.tenant_id, m.key_id, m.tokens, m.spend) for m in month_to_date(tenant_ids=tenant_ids)]


def spend_feed_push(*, tenant_ids: Iterable[int], now: datetime | None = None) -> int:
    """Sends month-to-date totals to the gateway; the gateway keeps the larger of live and ledger."""
    try:
        from gateway.quota import usage_baseline_set
    except ImportError:  # gateway without quotas: nothing to feed
        logger.warning("gateway.quota.usage_baseline_set is not available; spend feed skipped")
        return 0
    moment = now or timezone.now()
    period = period_label(month_start(moment))
    sent = 0
    for total in month_to_date(tenant_ids=tenant_ids, now=moment):
        usage_baseline_set(
            tenant_id=total.tenant_id, key_id=total.key_id, period=period, tokens=total.tokens, spend=total.spend
        )
        sent += 1
    return sent
