"""Usage alerts at 80% and 100% of a tenant's monthly token budget or spend cap.

Each (tenant, period, kind, threshold) is sent once: the row in `UsageAlert` is the record,
inserted before the email goes out, so two ingesters never send the same alert twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.models import AlertKind, UsageAlert
from billing.money import month_start, period_label
from billing.services.spend import month_to_date
from tenants.models import Membership, Tenant, TenantLimits
from tenants.permissions import Role

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[int, ...] = (80, 100)


def alert_recipients(tenant: Tenant) -> list[str]:
    """Owners and finance users of the tenant (active accounts), plus the billing email."""
    emails = set(
        Membership.objects.filter(
            tenant=tenant, role__in=[Role.OWNER.value, Role.FINANCE.value], user__is_active=True
        ).values_list("user__email", flat=True)
    )
    if tenant.billing_email:
        emails.add(tenant.billing_email)
    return sorted(emails)


def _send(tenant: Tenant, alert: UsageAlert) -> None:
    what = "monthly token budget" if alert.kind == AlertKind.TOKENS else "monthly spend cap"
    used = f"{int(alert.usage_value):,} tokens" if alert.kind == AlertKind.TOKENS else f"{alert.usage_value:.2f}"
    limit = f"{int(alert.limit_value):,} tokens" if alert.kind == AlertKind.TOKENS else f"{alert.limit_value:.2f}"
    subject = f"[mm-orch] {tenant.name}: {alert.threshold}% of the {what} used ({alert.period})"
    body = (
        f"Tenant {tenant.name} ({tenant.slug}) has used {used} of its {what} of {limit} "
        f"in {alert.period} ({alert.threshold}% threshold).\n\n"
        f"Usage: {settings.MMORCH_PUBLIC_URL}/\n"
    )
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, alert.recipients, fail_silently=False)


def usage_alerts_check(*, tenant_ids: Iterable[int], now: datetime | None = None) -> list[UsageAlert]:
    """Sends the alerts that are due for these tenants; returns the alerts sent now."""
    moment = now or timezone.now()
    period = period_label(month_start(moment))
    ids = set(tenant_ids)
    limits = {
        row.tenant_id: row
        for row in TenantLimits.objects.filter(tenant_id__in=ids).exclude(
            monthly_token_budget__isnull=True, monthly_spend_cap__isnull=True
        )
    }
    if not limits:
        return []
    sent: list[UsageAlert] = []
    for total in month_to_date(tenant_ids=limits.keys(), now=moment):
        if total.key_id is not None:
            continue
        row = limits[total.tenant_id]
        checks: list[tuple[str, Decimal, Decimal]] = []
        if row.monthly_token_budget:
            checks.append((AlertKind.TOKENS.value, Decimal(total.tokens), Decimal(row.monthly_token_budget)))
        if row.monthly_spend_cap:
            checks.append((AlertKind.SPEND.value, total.spend, Decimal(row.monthly_spend_cap)))
        for kind, used, cap in checks:
            if cap <= 0:
                continue
            for threshold in THRESHOLDS:
                if used * 100 < cap * threshold:
                    continue
                if UsageAlert.objects.filter(
                    tenant_id=total.tenant_id, period=period, kind=kind, threshold=threshold
                ).exists():
                    continue
                tenant = Tenant.objects.get(pk=total.tenant_id)
                try:
                    with transaction.atomic():
                        alert = UsageAlert.objects.create(
                            tenant=tenant,
                            period=period,
                            kind=kind,
                            threshold=threshold,
                            usage_value=used,
                            limit_value=cap,
                            recipients=alert_recipients(tenant),
                        )
                except IntegrityError:
                    continue  # another process sent it
                try:
                    if alert.recipients:
                        _send(tenant, alert)
                except Exception:  # the alert stays recorded; mail problems are logged, not retried
                    logger.exception("usage alert email for tenant %s failed", tenant.slug)
                sent.append(alert)
    return sent
