"""Writes of memberships: add a user to a tenant, change their role, remove them.

The last owner of a tenant stays: demoting or removing them is refused.
"""

from __future__ import annotations

from django.db import transaction

from core.audit import Actor
from core.errors import Conflict
from tenants.audit import audit_record
from tenants.models import Membership, Tenant, User
from tenants.permissions import Role
from tenants.services._validation import ensure_may_manage_role, ensure_role


def _owner_count(tenant: Tenant) -> int:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


@transaction.atomic
def membership_create(
    *, tenant: Tenant, user: User, role: str, actor: Actor, acting_role: Role | None = None
) -> Membership:
    role_value = ensure_role(role)
    ensure_may_manage_role(acting_role, role_value)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise Conflict(f"{user.email} is already a member.", code="already_member")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role_value)
    audit_record(
        actor=actor,
        tenant=tenant,
        action="membership.create",
        target_type="membership",
        target_id=membership.pk,
        after={"user": user.email, "role": role_value},
    )
    return membership


@transaction.atomic
def membership_role_change(
    *, membership: Membership, role: str, actor: Actor, acting_role: Role | None = None
) -> Membership:
    new_role = ensure_role(role)
    # Lock the tenant's owners so two demotions cannot both pass the last-owner check.
    list(Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id, role=Role.OWNER))
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    old_role = Role(membership.role)
    if old_role == new_role:
        return membership
    ensure_may_manage_role(acting_role, old_role)
    ensure_may_manage_role(acting_role, new_role)
    if old_role == Role.OWNER and _owner_count(membership.tenant) <= 1:
        raise Conflict("The last owner cannot be demoted; make another member owner first.", code="last_owner")
    membership.role = new_role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        tenant=membership.tenant,
        action="membership.role_change",
        target_type="membership",
        target_id=membership.pk,
        before={"user": membership.user.email, "role": old_role},
        after={"user": membership.user.email, "role": new_role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor, acting_role: Role | None = None) -> None:
    list(Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id, role=Role.OWNER))
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    role = Role(membership.role)
    ensure_may_manage_role(acting_role, role)
    if role == Role.OWNER and _owner_count(membership.tenant) <= 1:
        raise Conflict("The last owner cannot be removed.", code="last_owner")
    target_id = membership.pk
    membership.delete()
    audit_record(
        actor=actor,
        tenant=membership.tenant,
        action="membership.remove",
        target_type="membership",
        target_id=target_id,
        before={"user": membership.user.email, "role": role},
    )
