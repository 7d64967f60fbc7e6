"""Reads of billing data. Tenant-owned rows come only through these functions (404 for others)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from billing.models import Bucket, Invoice, InvoiceLine, Plan, Price, Subscription, UsageRollup
from billing.money import month_next, month_start
from billing.usage_attribution import AttributionQuery, ledger_usage_rows
from core.errors import NotFound
from tenants.models import Tenant


# --- invoices --------------------------------------------------------------------------------
def invoice_list(*, tenant: Tenant | None, status: str | None = None) -> QuerySet[Invoice]:
    """A tenant's invoices and credit notes, newest first; tenant=None lists every tenant (staff)."""
    qs = Invoice.objects.select_related("tenant").exclude(status="draft")
    if tenant is not None:
        qs = qs.filter(tenant=tenant)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-period_start", "-id")


def invoice_get_in_tenant(invoice_id: int | str, tenant: Tenant) -> Invoice:
    """By id or number; another tenant's invoice and a missing one both raise NotFound."""
    qs = Invoice.objects.select_related("tenant").filter(tenant=tenant).exclude(status="draft")
    raw = str(invoice_id)
    invoice = qs.filter(pk=int(raw)).first() if raw.isdigit() else qs.filter(number=raw).first()
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice


def invoice_lines(invoice: Invoice) -> QuerySet[InvoiceLine]:
    return InvoiceLine.objects.filter(invoice=invoice).order_by("position")


def invoice_lines_for_export(*, tenant: Tenant | None) -> Iterator[InvoiceLine]:
    """Every line of every issued invoice (streamed in chunks), with its invoice and tenant."""
    qs = InvoiceLine.objects.select_related("invoice", "invoice__tenant").exclude(invoice__status="draft")
    if tenant is not None:
        qs = qs.filter(invoice__tenant=tenant)
    return qs.order_by("-invoice__period_start", "invoice_id", "position").iterator(chunk_size=2000)


# --- plans -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TenantPlan:
    plan: Plan | None
    subscription: Subscription | None
    prices: list[Price]  # the prices in effect now, one per model


def subscription_current(tenant: Tenant, *, now: datetime | None = None) -> Subscription | None:
    moment = now or timezone.now()
    return (
        Subscription.objects.select_related("plan")
        .filter(tenant=tenant, starts_at__lte=moment)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=moment))
        .order_by("-starts_at")
        .first()
    )


def tenant_plan_get(tenant: Tenant, *, now: datetime | None = None) -> TenantPlan:
    """The tenant's plan and the prices that apply now (for the dashboard)."""
    moment = now or timezone.now()
    sub = subscription_current(tenant, now=moment)
    if sub is None:
        return TenantPlan(None, None, [])
    prices = Price.objects.filter(plan=sub.plan, effective_from__lte=moment).order_by("effective_from")
    return TenantPlan(sub.plan, sub, _prices_in_effect(prices))


def _prices_in_effect(prices: Iterable[Price]) -> list[Price]:
    """The latest of each model's prices, by model name; `prices` come oldest first and none in the future."""
    current: dict[str, Price] = {}
    for price in prices:
        current[price.model_name] = price
    return [current[name] for name in sorted(current)]


@dataclass(frozen=True, slots=True)
class PlanPrices:
    plan: Plan
    prices: list[Price]  # the prices in effect now, one per model


def plan_list(*, now: datetime | None = None) -> list[PlanPrices]:
    """Active plans by name, each with the prices in effect now (two queries)."""
    moment = now or timezone.now()
    # Scheduled prices are left out in the query; past ones are needed to find each model's latest.
    in_effect = Price.objects.filter(effective_from__lte=moment).order_by("effective_from", "id")
    plans = (
        Plan.objects.filter(is_active=True)
        .prefetch_related(Prefetch("prices", queryset=in_effect, to_attr="prices_so_far"))
        .order_by("name")
    )
    return [PlanPrices(plan, _prices_in_effect(plan.prices_so_far)) for plan in plans]  # type: ignore[attr-defined]


# --- usage -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UsageSummary:
    model_name: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


def usage_summary_month(*, tenant: Tenant, month: datetime | None = None) -> list[UsageSummary]:
    """Per-model totals of the month containing `month` (default: this month), from daily rollups."""
    start = month_start(month or timezone.now())
    rows = (
        UsageRollup.objects.filter(
            tenant=tenant, bucket=Bucket.DAY, bucket_start__gte=start, bucket_start__lt=month_next(start)
        )
        .values("model_name")
        .annotate(n=Sum("requests"), inp=Sum("input_tokens"), out=Sum("output_tokens"), cost=Sum("cost"))
        .order_by("model_name")
    )
    return [
        UsageSummary(r["model_name"], int(r["n"] or 0), int(r["inp"] or 0), int(r["out"] or 0), r["cost"] or Decimal(0))
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class UsageResult:
    input_tokens: int
    output_tokens: int
    requests: int
    cost: Decimal
    model: str | None = None
    api_key_id: int | None = None
    user: str | None = None  # the end user, when grouped by user ("" for unattributed usage)
    tags: dict[str, str | None] | None = None  # the grouped metadata tags' values


@dataclass(frozen=True, slots=True)
class UsageBucket:
    start: datetime
    end: datetime
    results: list[UsageResult]


def usage_buckets(
    *,
    tenant: Tenant,
    start: datetime,
    end: datetime,
    bucket: str,
    group_by: list[str],
    model: str | Collection[str] | None = None,
    key: int | Collection[int] | None = None,
    attribution: AttributionQuery | None = None,
) -> list[UsageBucket]:
    """Every bucket in [start, end) (empty ones too), grouped by model and/or key, from rollups;
    grouped or filtered by end user or metadata tags (`attribution`), from the ledger.

    `model` and `key` narrow the usage to one model name or key id, or to any of several; key 0
    is usage made without a key. An empty collection matches nothing.
    """
    step = timedelta(hours=1) if bucket == Bucket.HOUR else timedelta(days=1)
    if attribution is not None and attribution.needed():
        rows = ledger_usage_rows(
            tenant=tenant,
            start=start,
            end=end,
            bucket=bucket,
            group_by=group_by,
            attribution=attribution,
            model=[model] if isinstance(model, str) else model,
            key=[key] if isinstance(key, int) else key,
        )
        return _bucketed(rows, start, end, step, attribution)
    fields = ["bucket_start"] + [("model_name" if g == "model" else "key_id") for g in group_by]
    qs = UsageRollup.objects.filter(tenant=tenant, bucket=bucket, bucket_start__gte=start, bucket_start__lt=end)
    if model is not None:
        qs = qs.filter(model_name=model) if isinstance(model, str) else qs.filter(model_name__in=list(model))
    if key is not None:
        qs = qs.filter(key_id=key) if isinstance(key, int) else qs.filter(key_id__in=list(key))
    rows = (
        qs.values(*fields)
        .annotate(inp=Sum("input_tokens"), out=Sum("output_tokens"), n=Sum("requests"), cost=Sum("cost"), c=Count("id"))
        .order_by(*fields)
    )
    return _bucketed(rows, start, end, step, None)


def _bucketed(
    rows: Iterable[dict[str, Any]],
    start: datetime,
    end: datetime,
    step: timedelta,
    attribution: AttributionQuery | None,
) -> list[UsageBucket]:
    grouped_tags = attribution.group_tags if attribution is not None else ()
    by_start: dict[datetime, list[UsageResult]] = {}
    for row in rows:
        by_start.setdefault(row["bucket_start"], []).append(
            UsageResult(
                input_tokens=int(row["inp"] or 0),
                output_tokens=int(row["out"] or 0),
                requests=int(row["n"] or 0),
                cost=row["cost"] or Decimal(0),
                model=row.get("model_name"),
                api_key_id=(row["key_id"] or None) if "key_id" in row else None,
                user=row.get("end_user"),
                tags={tag: row[f"tag{i}"] for i, tag in enumerate(grouped_tags)} if grouped_tags else None,
            )
        )
    buckets: list[UsageBucket] = []
    cursor = start
    while cursor < end:
        buckets.append(UsageBucket(cursor, cursor + step, by_start.get(cursor, [])))
        cursor += step
    return buckets
