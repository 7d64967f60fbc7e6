"""Service-level objectives per tenant and model, and the month's error budget, from the ledger.

Availability counts admitted requests (every ledger row is one) whose outcome is `error` as failed;
an aborted request is the client's choice, not a failure. The latency objective "p95 time to first
token <= T" holds exactly when at most 5% of requests with a first token took longer than T, so its
budget is those slow requests against 5% of the total: exact, and cheap for the database (counts,
no percentiles). Inter-token latency is not in the ledger: Prometheus tracks that objective.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Q
from django.utils import timezone

from billing.models import (
    SLO_AVAILABILITY_DEFAULT,
    SLO_ITL_P95_MS_DEFAULT,
    SLO_TTFT_P95_MS_DEFAULT,
    Outcome,
    Subscription,
    UsageRecord,
)
from billing.money import month_next, month_start
from tenants.models import Tenant

LATENCY_QUANTILE = Decimal("0.95")
HUNDRED = Decimal(100)
_PLACES = Decimal("0.001")


@dataclass(frozen=True, slots=True)
class SloTargets:
    availability: Decimal  # percent of admitted requests that must not fail
    ttft_p95_ms: int
    itl_p95_ms: int


DEFAULT_TARGETS = SloTargets(SLO_AVAILABILITY_DEFAULT, SLO_TTFT_P95_MS_DEFAULT, SLO_ITL_P95_MS_DEFAULT)


def _budget_left(bad: int, total: int, allowed_fraction: Decimal) -> Decimal:
    """Percent of the error budget not yet spent (100 with no traffic; negative once overspent)."""
    if total == 0:
        return HUNDRED
    allowed = allowed_fraction * total  # > 0: targets stay below 100%
    return (HUNDRED * (1 - bad / allowed)).quantize(_PLACES)


@dataclass(frozen=True, slots=True)
class SloRow:
    tenant_id: int
    tenant_slug: str
    model: str
    targets: SloTargets
    requests: int  # admitted requests in the month so far
    errors: int  # of those, outcome error
    timed: int  # requests that got a first token (ttft measured)
    slow: int  # of those, first token later than the target

    @property
    def availability(self) -> Decimal | None:
        if not self.requests:
            return None
        return (HUNDRED * (self.requests - self.errors) / self.requests).quantize(_PLACES)

    @property
    def availability_budget_left(self) -> Decimal:
        return _budget_left(self.errors, self.requests, (HUNDRED - self.targets.availability) / HUNDRED)

    @property
    def ttft_within_target(self) -> Decimal | None:
        """Percent of timed requests whose first token came within the target."""
        if not self.timed:
            return None
        return (HUNDRED * (self.timed - self.slow) / self.timed).quantize(_PLACES)

    @property
    def latency_budget_left(self) -> Decimal:
        return _budget_left(self.slow, self.timed, 1 - LATENCY_QUANTILE)

    @property
    def met(self) -> bool:
        return self.availability_budget_left >= 0 and self.latency_budget_left >= 0


def slo_targets_by_tenant(tenant_ids: list[int], *, now: datetime) -> dict[int, SloTargets]:
    """Each tenant's targets from the plan it is on now; tenants without a plan get the defaults."""
    subs = (
        Subscription.objects.select_related("plan")
        .filter(tenant_id__in=tenant_ids, starts_at__lte=now)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .order_by("tenant_id", "starts_at")
    )
    targets = dict.fromkeys(tenant_ids, DEFAULT_TARGETS)
    for sub in subs:  # ordered by start: the latest current subscription wins
        plan = sub.plan
        targets[sub.tenant_id] = SloTargets(plan.slo_availability, plan.slo_ttft_p95_ms, plan.slo_itl_p95_ms)
    return targets


def slo_report(*, tenant: Tenant | None, month: datetime | None = None, now: datetime | None = None) -> list[SloRow]:
    """Per tenant and model for the month holding `month` (default this one), up to now.

    tenant=None reports every tenant (staff). Queries: one for counts, one for targets, one per
    distinct ttft target (plans are few).
    """
    moment = now or timezone.now()
    start = month_start(month or moment)
    end = min(month_next(start), moment) if start <= moment else start
    rows = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    counts = list(
        rows.values("tenant_id", "tenant__slug", "model_name")
        .annotate(
            n=Count("id"),
            errors=Count("id", filter=Q(outcome=Outcome.ERROR)),
            timed=Count("id", filter=Q(ttft_ms__isnull=False)),
        )
        .order_by("tenant__slug", "model_name")
    )
    targets = slo_targets_by_tenant(sorted({c["tenant_id"] for c in counts}), now=moment)
    by_ttft: dict[int, list[int]] = defaultdict(list)
    for tenant_id, t in targets.items():
        by_ttft[t.ttft_p95_ms].append(tenant_id)
    slow: dict[tuple[int, str], int] = {}
    for limit, tenant_ids in by_ttft.items():
        for r in (
            rows.filter(tenant_id__in=tenant_ids, ttft_ms__gt=limit)
            .values("tenant_id", "model_name")
            .annotate(n=Count("id"))
            .order_by()
        ):
            slow[(r["tenant_id"], r["model_name"])] = r["n"]
    return [
        SloRow(
            tenant_id=c["tenant_id"],
            tenant_slug=c["tenant__slug"],
            model=c["model_name"],
            targets=targets[c["tenant_id"]],
            requests=c["n"],
            errors=c["errors"],
            timed=c["timed"],
            slow=slow.get((c["tenant_id"], c["model_name"]), 0),
        )
        for c in counts
    ]
