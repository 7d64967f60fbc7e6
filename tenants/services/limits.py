"""Writes of a tenant's limits (staff, or the defaults of a plan subscription)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.audit import Actor
from core.errors import ValidationFailed
from core.validation import full_clean_or_raise
from tenants.audit import audit_record
from tenants.keyauth import key_cache_invalidate
from tenants.models import Tenant, TenantLimits
from tenants.selectors import LIMIT_FIELDS, TENANT_ONLY_LIMIT_FIELDS
from tenants.services._validation import MAX_INT, UNSET, Unset, validate_limit_overrides


@transaction.atomic
def limits_update(
    *,
    tenant: Tenant,
    actor: Actor,
    requests_per_minute: int | Unset | None = UNSET,
    tokens_per_minute: int | Unset | None = UNSET,
    max_concurrent_requests: int | Unset | None = UNSET,
    monthly_token_budget: int | Unset | None = UNSET,
    monthly_spend_cap: Decimal | Unset | None = UNSET,
    scheduling_weight: int | Unset = UNSET,
    max_prompt_tokens: int | Unset | None = UNSET,
    max_output_tokens: int | Unset | None = UNSET,
    max_messages: int | Unset | None = UNSET,
    max_choices: int | Unset | None = UNSET,
) -> TenantLimits:
    """Sets the limits given; None clears a limit (unlimited), a limit not given stays."""
    given: dict[str, Any] = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "max_concurrent_requests": max_concurrent_requests,
        "monthly_token_budget": monthly_token_budget,
        "monthly_spend_cap": monthly_spend_cap,
        "scheduling_weight": scheduling_weight,
        "max_prompt_tokens": max_prompt_tokens,
        "max_output_tokens": max_output_tokens,
        "max_messages": max_messages,
        "max_choices": max_choices,
    }
    fields = {name: value for name, value in given.items() if value is not UNSET}
    limits, _ = TenantLimits.objects.select_for_update().get_or_create(tenant=tenant)
    before = {name: getattr(limits, name) for name in fields}
    weight = fields.get("scheduling_weight", limits.scheduling_weight)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_INT:
        raise ValidationFailed("scheduling_weight is a whole number >= 1.", param="scheduling_weight")
    clean = validate_limit_overrides({k: v for k, v in fields.items() if k in LIMIT_FIELDS})
    for name in TENANT_ONLY_LIMIT_FIELDS:
        if name in fields and name != "scheduling_weight":
            value = fields[name]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT
            ):
                raise ValidationFailed(f"{name} is a whole number from 0 to {MAX_INT}.", param=name)
            clean[name] = value
    if "scheduling_weight" in fields:
        clean["scheduling_weight"] = weight
    for name, value in clean.items():
        setattr(limits, name, value)
    full_clean_or_raise(limits, exclude=["tenant"])
    after = {name: getattr(limits, name) for name in fields}
    if after == before:
        return limits
    limits.updated_at = timezone.now()
    limits.save()
    audit_record(
        actor=actor,
        tenant=tenant,
        action="limits.update",
        target_type="tenant_limits",
        target_id=limits.pk,
        before=before,
        after=after,
    )
    key_cache_invalidate()
    return limits
