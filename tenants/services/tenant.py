"""Writes of tenants: create (and onboard with an owner invitation), suspend, reactivate, close."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import Actor
from core.errors import Conflict, ValidationFailed
from core.validation import full_clean_or_raise
from tenants.audit import audit_record
from tenants.keyauth import key_cache_invalidate
from tenants.models import Invitation, Tenant, TenantLimits, TenantStatus, User
from tenants.permissions import Role
from tenants.services._validation import validate_email, validate_slug
from tenants.services.invitation import invitation_create


@transaction.atomic
def tenant_create(*, slug: str, name: str, actor: Actor, billing_email: str = "") -> Tenant:
    validate_slug(slug)
    if not name or not name.strip():
        raise ValidationFailed("A tenant needs a name.", param="name")
    if billing_email:
        billing_email = validate_email(billing_email, "billing_email")
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"The slug {slug!r} is taken.", param="slug", code="slug_taken")
    tenant = Tenant(slug=slug, name=name.strip(), billing_email=billing_email)
    full_clean_or_raise(tenant)
    try:
        with transaction.atomic():
            tenant.save()
    except IntegrityError as exc:  # a concurrent create won the race
        raise Conflict(f"The slug {slug!r} is taken.", param="slug", code="slug_taken") from exc
    TenantLimits.objects.create(tenant=tenant)
    audit_record(
        actor=actor,
        tenant=tenant,
        action="tenant.create",
        target_type="tenant",
        target_id=tenant.pk,
        after={"slug": slug, "name": tenant.name, "status": tenant.status},
    )
    return tenant


@transaction.atomic
def tenant_onboard(
    *,
    slug: str,
    name: str,
    actor: Actor,
    billing_email: str = "",
    owner_email: str | None = None,
    invited_by: User | None = None,
) -> tuple[Tenant, Invitation | None]:
    """A new tenant and, when an owner email is given, that owner's invitation (all or nothing)."""
    tenant = tenant_create(slug=slug, name=name, billing_email=billing_email, actor=actor)
    if not owner_email:
        return tenant, None
    invitation, _token = invitation_create(
        tenant=tenant, email=owner_email, role=Role.OWNER, actor=actor, invited_by=invited_by
    )
    return tenant, invitation


def _tenant_set_status(*, tenant: Tenant, status: str, allowed_from: set[str], actor: Actor, action: str) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.status == status:
            return tenant  # idempotent: nothing changes, nothing to audit
        if tenant.status not in allowed_from:
            raise Conflict(f"A {tenant.status} tenant cannot be {status}.", code="invalid_status_transition")
        before = tenant.status
        tenant.status = status
        tenant.status_changed_at = timezone.now()
        tenant.save(update_fields=["status", "status_changed_at"])
        audit_record(
            actor=actor,
            tenant=tenant,
            action=action,
            target_type="tenant",
            target_id=tenant.pk,
            before={"status": before},
            after={"status": status},
        )
        key_cache_invalidate()
    return tenant


def tenant_suspend(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Its keys stop working at once (within a second everywhere); its data stays."""
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.SUSPENDED,
        allowed_from={TenantStatus.ACTIVE},
        actor=actor,
        action="tenant.suspend",
    )


def tenant_reactivate(*, tenant: Tenant, actor: Actor) -> Tenant:
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.ACTIVE,
        allowed_from={TenantStatus.SUSPENDED},
        actor=actor,
        action="tenant.reactivate",
    )


def tenant_close(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Final: keys stop working and members lose access; rows stay for billing and audit."""
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.CLOSED,
        allowed_from={TenantStatus.ACTIVE, TenantStatus.SUSPENDED},
        actor=actor,
        action="tenant.close",
    )
