"""Reads of tenant data. Tenant-owned rows are fetched only through these functions.

A row of another tenant and a missing row both raise `NotFound`, so nobody can probe ids.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from core.errors import NotFound
from tenants.models import (
    APIKey,
    AuditEvent,
    Invitation,
    InvitationStatus,
    Membership,
    Tenant,
    TenantLimits,
    TenantStatus,
    User,
)
from tenants.types import EffectiveLimits

NO_SUCH_TENANT = "No such tenant."

LIMIT_FIELDS: tuple[str, ...] = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "monthly_token_budget",
    "monthly_spend_cap",
)
TENANT_ONLY_LIMIT_FIELDS: tuple[str, ...] = (
    "scheduling_weight",
    "max_prompt_tokens",
    "max_output_tokens",
    "max_messages",
    "max_choices",
)


# --- tenants ---------------------------------------------------------------------------------
def tenant_get_by_slug(slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise NotFound(NO_SUCH_TENANT)
    return tenant


def tenant_list_for_user(user: User) -> QuerySet[Tenant]:
    """Tenants the user belongs to; platform staff see every tenant."""
    if user.is_staff:
        return Tenant.objects.all().order_by("slug")
    return Tenant.objects.filter(memberships__user=user).exclude(status=TenantStatus.CLOSED).order_by("slug")


# --- members ---------------------------------------------------------------------------------
def membership_get(*, tenant: Tenant, user: User | int | None) -> Membership | None:
    if user is None:
        return None
    user_id = user if isinstance(user, int) else user.pk
    return Membership.objects.filter(tenant=tenant, user_id=user_id).first()


def membership_get_in_tenant(membership_id: int, tenant: Tenant) -> Membership:
    membership = Membership.objects.select_related("user").filter(id=membership_id, tenant=tenant).first()
    if membership is None:
        raise NotFound("No such member.")
    return membership


def member_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(tenant=tenant).order_by("id")


# --- invitations -----------------------------------------------------------------------------
def invitation_get_in_tenant(invitation_id: int, tenant: Tenant) -> Invitation:
    invitation = Invitation.objects.select_related("invited_by").filter(id=invitation_id, tenant=tenant).first()
    if invitation is None:
        raise NotFound("No such invitation.")
    return invitation


def token_digest(raw: str) -> str:
    """SHA-256 of a secret (API key, invitation token): only this is stored, so look-ups compare it."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def invitation_get_by_token(token: str) -> Invitation | None:
    """The pending, unexpired invitation the emailed token belongs to, with its tenant; else None.

    For showing the invitation before it is accepted; `invitation_accept` checks again under a lock.
    """
    return (
        Invitation.objects.select_related("tenant", "invited_by")
        .filter(token_digest=token_digest(token), status=InvitationStatus.PENDING, expires_at__gt=timezone.now())
        .first()
    )


def invitation_list(*, tenant: Tenant, status: str | None = None) -> QuerySet[Invitation]:
    qs = Invitation.objects.select_related("invited_by").filter(tenant=tenant)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at", "-id")


# --- keys ------------------------------------------------------------------------------------
def key_get_in_tenant(key_id: int, tenant: Tenant, *, created_by_id: int | None = None) -> APIKey:
    """The key, if it belongs to the tenant (and, when given, to that creator)."""
    qs = APIKey.objects.select_related("created_by", "tenant").filter(id=key_id, tenant=tenant)
    if created_by_id is not None:
        qs = qs.filter(created_by_id=created_by_id)
    key = qs.first()
    if key is None:
        raise NotFound("No such API key.")
    return key


def key_list(
    *, tenant: Tenant, created_by_id: int | None = None, kind: str | None = None, include_revoked: bool = True
) -> QuerySet[APIKey]:
    qs = APIKey.objects.select_related("created_by").filter(tenant=tenant)
    if created_by_id is not None:
        qs = qs.filter(created_by_id=created_by_id)
    if kind:
        qs = qs.filter(kind=kind)
    if not include_revoked:
        qs = qs.filter(revoked_at__isnull=True)
    return qs.order_by("-created_at", "-id")


# --- limits ----------------------------------------------------------------------------------
def tenant_limits_get(tenant: Tenant) -> TenantLimits:
    """The tenant's limits; an unsaved all-default row if none was stored yet."""
    limits = TenantLimits.objects.filter(tenant=tenant).first()
    return limits if limits is not None else TenantLimits(tenant=tenant)


def limits_from_rows(tenant_limits: TenantLimits | None, key: APIKey | None = None) -> EffectiveLimits:
    """Key overrides (when set) over the tenant's values; no database access."""
    values: dict[str, Any] = {}
    for name in LIMIT_FIELDS:
        tenant_value = getattr(tenant_limits, name) if tenant_limits is not None else None
        key_value = getattr(key, name) if key is not None else None
        values[name] = key_value if key_value is not None else tenant_value
    for name in TENANT_ONLY_LIMIT_FIELDS:
        value = getattr(tenant_limits, name) if tenant_limits is not None else None
        if value is not None:
            values[name] = value
    return EffectiveLimits(**values)


def limits_effective(key: APIKey) -> EffectiveLimits:
    """What applies to a key: its overrides over its tenant's limits."""
    return limits_from_rows(TenantLimits.objects.filter(tenant_id=key.tenant_id).first(), key)


# --- audit -----------------------------------------------------------------------------------
def audit_event_list(
    *,
    tenant: Tenant,
    action: str | None = None,
    actor: str | None = None,
    actor_user_id: int | None = None,
    actor_key_id: int | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.filter(tenant=tenant)
    if action:
        # "key" matches every key action; "key.revoke" only that one.
        qs = qs.filter(action=action) if "." in action else qs.filter(action__startswith=f"{action}.")
    if actor:
        qs = qs.filter(actor_label__iexact=actor)
    if actor_user_id is not None:
        qs = qs.filter(actor_user_id=actor_user_id)
    if actor_key_id is not None:
        qs = qs.filter(actor_key_id=actor_key_id)
    if created_after is not None:
        qs = qs.filter(created_at__gte=created_after)
    if created_before is not None:
        qs = qs.filter(created_at__lt=created_before)
    return qs.order_by("-created_at", "-id")
