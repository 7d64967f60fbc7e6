"""Spend anomalies: a tenant whose spend today jumps above N x its trailing daily average.

Computed from the daily rollups (so a day is a UTC calendar day, and the window crosses month and
year ends like any other days). The trailing average is over the previous BILLING_SPEND_JUMP_DAYS
days, days without spend counting as zero; a tenant with no spend in the window has no average and
is not judged. Each (tenant, day) is reported once: the `UsageAlert` row is written before the
email and the webhook go out, so two workers never send the same alert twice.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import AlertKind, Bucket, UsageAlert, UsageRollup
from billing.selectors import tenant_plan_get
from billing.services.alerts import alert_recipients
from billing.services.rollups import day_floor
from tenants.models import Tenant

logger = logging.getLogger(__name__)
_CENTS = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class SpendJump:
    tenant: Tenant
    day: str  # YYYY-MM-DD (UTC)
    spend: Decimal  # today so far
    average: Decimal  # per day over the trailing window
    factor: Decimal


def spend_jumps_find(*, now: datetime, factor: Decimal, days: int, minimum: Decimal) -> list[SpendJump]:
    """Tenants whose spend today is above `factor` x their trailing daily average (and >= minimum)."""
    today = day_floor(now)
    daily = UsageRollup.objects.filter(bucket=Bucket.DAY)  # every key and model of the tenant
    spent_today = {
        r["tenant_id"]: r["spend"]
        for r in daily.filter(bucket_start=today).values("tenant_id").annotate(spend=Sum("cost")).order_by()
        if r["spend"] is not None and r["spend"] >= minimum
    }
    if not spent_today:
        return []
    trailing = {
        r["tenant_id"]: r["spend"]
        for r in daily.filter(
            tenant_id__in=spent_today, bucket_start__gte=today - timedelta(days=days), bucket_start__lt=today
        )
        .values("tenant_id")
        .annotate(spend=Sum("cost"))
        .order_by()
    }
    tenants = Tenant.objects.in_bulk(list(spent_today))
    jumps = []
    for tenant_id, spend in sorted(spent_today.items()):
        history = trailing.get(tenant_id) or Decimal(0)
        if history <= 0:
            continue
        average = history / days
        if spend > factor * average:
            jumps.append(SpendJump(tenants[tenant_id], today.date().isoformat(), spend, average, factor))
    return jumps


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _message(jump: SpendJump, currency: str) -> tuple[str, str, dict[str, object]]:
    ratio = (jump.spend / jump.average).quantize(Decimal("0.1"))
    spend, average = jump.spend.quantize(_CENTS), jump.average.quantize(_CENTS)
    subject = f"[mm-orch] {jump.tenant.name}: spend on {jump.day} is {ratio}x its daily average"
    body = (
        f"Tenant {jump.tenant.name} ({jump.tenant.slug}) has spent {spend} {currency} on {jump.day} (UTC) so far, "
        f"{ratio} times its average of {average} per day over the previous "
        f"{settings.BILLING_SPEND_JUMP_DAYS} days (alert above {jump.factor}x).\n\n"
        f"Usage: {settings.MMORCH_PUBLIC_URL}/t/{jump.tenant.slug}/usage/\n"
    )
    payload: dict[str, object] = {
        "type": "spend_jump",
        "tenant": jump.tenant.slug,
        "day": jump.day,
        "spend": _plain(jump.spend),
        "trailing_daily_average": _plain(jump.average),
        "trailing_days": settings.BILLING_SPEND_JUMP_DAYS,
        "factor": str(jump.factor),
        "ratio": str(ratio),
        "currency": currency,
    }
    return subject, body, payload


def alert_webhook_post(payload: dict[str, object]) -> None:
    """POST the alert as JSON to BILLING_ALERT_WEBHOOK_URL (when set); raises on failure."""
    url = settings.BILLING_ALERT_WEBHOOK_URL
    if not url:
        return
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"BILLING_ALERT_WEBHOOK_URL must be an http(s) URL, not {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "mm-orch-alerts"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.BILLING_ALERT_WEBHOOK_TIMEOUT_S) as response:  # noqa: S310
        response.read()


def spend_jump_check(*, now: datetime | None = None) -> list[UsageAlert]:
    """Finds today's spend jumps and reports each new one by email and webhook; returns those sent."""
    moment = now or timezone.now()
    factor = Decimal(str(settings.BILLING_SPEND_JUMP_FACTOR))
    jumps = spend_jumps_find(
        now=moment, factor=factor, days=settings.BILLING_SPEND_JUMP_DAYS, minimum=settings.BILLING_SPEND_JUMP_MIN
    )
    sent = []
    for jump in jumps:
        try:
            with transaction.atomic():
                alert = UsageAlert.objects.create(
                    tenant=jump.tenant,
                    period=jump.day,
                    kind=AlertKind.SPEND_JUMP,
                    threshold=int(factor * 100),
                    usage_value=jump.spend,
                    limit_value=factor * jump.average,
                    recipients=alert_recipients(jump.tenant),
                )
        except IntegrityError:
            continue  # already reported today
        plan = tenant_plan_get(jump.tenant, now=moment).plan
        currency = plan.currency if plan else settings.BILLING_DEFAULT_CURRENCY
        subject, body, payload = _message(jump, currency)
        # Delivery problems are logged, not retried: the alert stays recorded and shows in the admin.
        try:
            if alert.recipients:
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, alert.recipients, fail_silently=False)
        except Exception:
            logger.exception("spend jump email for tenant %s failed", jump.tenant.slug)
        try:
            alert_webhook_post(payload)
        except Exception:
            logger.exception("spend jump webhook for tenant %s failed", jump.tenant.slug)
        sent.append(alert)
    return sent
