"""Plans, prices and subscriptions (platform staff)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import (
    PRICE_DIGITS,
    PRICE_PLACES,
    SLO_AVAILABILITY_MAX,
    SLO_AVAILABILITY_MIN,
    SLO_LATENCY_MAX_MS,
    Plan,
    Price,
    Subscription,
)
from billing.money import validate_currency
from core.audit import Actor
from core.errors import Conflict, ValidationFailed
from tenants.audit import audit_record
from tenants.models import Tenant
from tenants.selectors import LIMIT_FIELDS, TENANT_ONLY_LIMIT_FIELDS
from tenants.services.limits import limits_update


def _decimal(value: Any, *, param: str, places: int, digits: int = PRICE_DIGITS) -> Decimal:
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationFailed(f"{param} must be a decimal number.", param=param) from exc
    if not number.is_finite() or number < 0:
        raise ValidationFailed(f"{param} must be a number >= 0.", param=param)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise ValidationFailed(f"{param} has more than {places} decimal places.", param=param)
    if number >= Decimal(10) ** (digits - places):
        raise ValidationFailed(f"{param} is too large.", param=param)
    return number


def _validate_limits(values: Mapping[str, Any]) -> dict[str, Any]:
    allowed = set(LIMIT_FIELDS) | set(TENANT_ONLY_LIMIT_FIELDS)
    for name in values:
        if name not in allowed:
            raise ValidationFailed(f"{name!r} is not a tenant limit.", param="default_limits", code="unknown_field")
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in values.items()}


def _validate_slo(availability: Decimal | str | None, ttft_ms: int | None, itl_ms: int | None) -> dict[str, Any]:
    """The service-level targets given (absent ones keep the model's defaults), checked."""
    targets: dict[str, Any] = {}
    if availability is not None:
        value = _decimal(availability, param="slo_availability", places=3, digits=6)
        if not SLO_AVAILABILITY_MIN <= value <= SLO_AVAILABILITY_MAX:
            raise ValidationFailed(
                f"slo_availability is a percentage from {SLO_AVAILABILITY_MIN} to {SLO_AVAILABILITY_MAX}.",
                param="slo_availability",
            )
        targets["slo_availability"] = value
    for name, ms in (("slo_ttft_p95_ms", ttft_ms), ("slo_itl_p95_ms", itl_ms)):
        if ms is None:
            continue
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= SLO_LATENCY_MAX_MS:
            raise ValidationFailed(f"{name} is whole milliseconds from 1 to {SLO_LATENCY_MAX_MS}.", param=name)
        targets[name] = ms
    return targets


@transaction.atomic
def plan_slo_set(
    *,
    plan: Plan,
    actor: Actor,
    slo_availability: Decimal | str | None = None,
    slo_ttft_p95_ms: int | None = None,
    slo_itl_p95_ms: int | None = None,
) -> Plan:
    """Changes a plan's service-level targets (the SLO pages and budgets use them from now on)."""
    targets = _validate_slo(slo_availability, slo_ttft_p95_ms, slo_itl_p95_ms)
    before = {name: getattr(plan, name) for name in targets}
    for name, value in targets.items():
        setattr(plan, name, value)
    plan.save(update_fields=list(targets))
    audit_record(
        actor=actor,
        tenant=None,
        action="plan.slo_set",
        target_type="plan",
        target_id=plan.pk,
        before=before,
        after=targets,
    )
    return plan


@transaction.atomic
def plan_create(
    *,
    name: str,
    currency: str,
    actor: Actor,
    base_fee: Decimal | str | int = 0,
    included_tokens: int = 0,
    default_limits: Mapping[str, Any] | None = None,
    slo_availability: Decimal | str | None = None,
    slo_ttft_p95_ms: int | None = None,
    slo_itl_p95_ms: int | None = None,
) -> Plan:
    name = (name or "").strip()
    if not 0 < len(name) <= 100:
        raise ValidationFailed("name is 1-100 characters.", param="name")
    if Plan.objects.filter(name=name).exists():
        raise Conflict(f"A plan named {name!r} exists.", param="name", code="plan_exists")
    if isinstance(included_tokens, bool) or not isinstance(included_tokens, int) or included_tokens < 0:
        raise ValidationFailed("included_tokens is a whole number >= 0.", param="included_tokens")
    plan = Plan.objects.create(
        name=name,
        currency=validate_currency(currency),
        base_fee=_decimal(base_fee, param="base_fee", places=2, digits=14),
        included_tokens=included_tokens,
        default_limits=_validate_limits(default_limits or {}),
        **_validate_slo(slo_availability, slo_ttft_p95_ms, slo_itl_p95_ms),
    )
    audit_record(
        actor=actor,
        tenant=None,
        action="plan.create",
        target_type="plan",
        target_id=plan.pk,
        after={"name": plan.name, "currency": plan.currency, "base_fee": plan.base_fee},
    )
    return plan


@transaction.atomic
def price_set(
    *,
    plan: Plan,
    model_name: str,
    input_per_1m: Decimal | str,
    output_per_1m: Decimal | str,
    actor: Actor,
    effective_from: datetime | None = None,
) -> Price:
    """A new price from `effective_from` (default: now). Never backwards: ledger rows keep their price."""
    now = timezone.now()
    moment = effective_from or now
    if timezone.is_naive(moment):
        raise ValidationFailed("effective_from must carry a time zone.", param="effective_from")
    if moment < now:
        raise ValidationFailed(
            "A price change applies from now or a future date, never backwards.",
            param="effective_from",
            code="price_backdated",
        )
    model_name = (model_name or "").strip()
    if not 0 < len(model_name) <= 200:
        raise ValidationFailed("model is 1-200 characters.", param="model")
    price, created = Price.objects.get_or_create(
        plan=plan,
        model_name=model_name,
        effective_from=moment,
        defaults={
            "input_per_1m": _decimal(input_per_1m, param="input_per_1m", places=PRICE_PLACES),
            "output_per_1m": _decimal(output_per_1m, param="output_per_1m", places=PRICE_PLACES),
        },
    )
    if not created:
        raise Conflict("A price with this effective date exists.", param="effective_from", code="price_exists")
    audit_record(
        actor=actor,
        tenant=None,
        action="price.set",
        target_type="price",
        target_id=price.pk,
        after={
            "plan": plan.name,
            "model": model_name,
            "input_per_1m": price.input_per_1m,
            "output_per_1m": price.output_per_1m,
            "effective_from": moment,
        },
    )
    return price


def plan_model_names(plan: Plan) -> list[str]:
    return sorted(set(Price.objects.filter(plan=plan).values_list("model_name", flat=True)))


@transaction.atomic
def subscription_create(*, tenant: Tenant, plan: Plan, actor: Actor, starts_at: datetime | None = None) -> Subscription:
    """Moves the tenant to `plan` from `starts_at` (default now): ends the current subscription,
    applies the plan's default limits and grants the plan's models."""
    now = timezone.now()
    moment = starts_at or now
    if moment < now:
        raise ValidationFailed("A subscription starts now or later.", param="starts_at", code="subscription_backdated")
    if not plan.is_active:
        raise ValidationFailed("This plan is not offered any more.", param="plan", code="plan_inactive")
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one plan change at a time
    if Subscription.objects.filter(tenant=tenant, starts_at__gte=moment).exists():
        raise Conflict("A later subscription is already scheduled.", param="starts_at", code="subscription_scheduled")
    current = Subscription.objects.filter(tenant=tenant, starts_at__lt=moment).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=moment)
    )
    before = [{"plan": s.plan_id, "starts_at": s.starts_at.isoformat()} for s in current]
    current.update(ends_at=moment)
    sub = Subscription.objects.create(tenant=tenant, plan=plan, starts_at=moment)
    if plan.default_limits:
        # default_limits is JSON: names were checked against the limit fields when the plan was saved.
        defaults: dict[str, Any] = {
            k: (Decimal(v) if k == "monthly_spend_cap" and v is not None else v) for k, v in plan.default_limits.items()
        }
        limits_update(tenant=tenant, actor=actor, **defaults)
    from gateway.services import model_grants_sync  # billing → gateway

    model_grants_sync(tenant=tenant, model_names=plan_model_names(plan), source="plan", actor=actor)
    audit_record(
        actor=actor,
        tenant=tenant,
        action="subscription.create",
        target_type="subscription",
        target_id=sub.pk,
        before={"subscriptions": before} if before else None,
        after={"plan": plan.name, "starts_at": moment},
    )
    return sub
