"""The one door to a tenant: who is asking, in which tenant, with which role and scopes.

The management API (`tenants.api.base.TenantScopedAPIView`) and the dashboard
(`frontend.access.tenant_page`) both call `tenant_access`, so a role, a key or a tenant's
status means the same at either door:

- a missing tenant, a tenant the person is not a member of, another tenant's key and (for
  everyone but staff) a closed tenant all raise the same `NotFound`;
- a suspended tenant is read-only: every `:write` scope is refused (`PermissionRefused`,
  code `tenant_suspended`), staff excepted;
- a scope the caller lacks is refused (`PermissionRefused`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import NotFound, PermissionRefused
from tenants import selectors
from tenants.models import Membership, Tenant, TenantStatus, User
from tenants.permissions import KEY_MANAGER_ROLES, STAFF_SCOPES, Role, scopes_for_role
from tenants.selectors import NO_SUCH_TENANT
from tenants.types import KeyContext


def is_write_scope(scope: str) -> bool:
    return scope.endswith(":write")


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """The caller's standing in one tenant, resolved once per request."""

    tenant: Tenant
    user: User | None  # the signed-in person; None when an admin key acts
    key: KeyContext | None  # the admin key; None when a person acts
    membership: Membership | None  # None for keys, and for staff who are not members
    # The role the caller acts with: a member's, an admin key's creator's; None for staff
    # (and platform-made keys), who are bound only by the services' invariants.
    role: Role | None
    scopes: frozenset[str]
    writable: bool  # False while the tenant is not active (staff may still write)
    is_staff: bool = False

    @property
    def acting_user_id(self) -> int | None:
        """The user on whose behalf the caller acts (a person, a key's creator)."""
        if self.user is not None:
            return int(self.user.pk)
        return self.key.created_by_id if self.key is not None else None

    @property
    def role_label(self) -> str:
        """For people to read: the membership's role, else "staff"."""
        if self.membership is not None:
            return str(self.membership.role)
        return "staff" if self.is_staff else str(self.role or "")

    @property
    def manages_all_keys(self) -> bool:
        """Owners, admins and staff manage every key of the tenant; other roles only their own."""
        return self.role is None or self.role in KEY_MANAGER_ROLES

    def can(self, scope: str) -> bool:
        """Whether the door would let this caller use `scope` now."""
        return scope in self.scopes and (self.writable or not is_write_scope(scope))

    def require_writable(self) -> None:
        if not self.writable:
            raise PermissionRefused(f"The tenant is {self.tenant.status}; it is read-only.", code="tenant_suspended")

    def require(self, scope: str) -> None:
        if is_write_scope(scope):
            self.require_writable()
        if scope not in self.scopes:
            raise PermissionRefused(f"This needs the {scope} scope.")


def _creator_standing(tenant: Tenant, user_id: int | None) -> tuple[Role | None, frozenset[str] | None]:
    """The role an admin key acts with and the cap on its scopes (None: no cap, staff)."""
    if user_id is None:
        return None, None  # created by the platform (staff tooling, seeding)
    membership = selectors.membership_get(tenant=tenant, user=user_id)
    if User.objects.filter(pk=user_id, is_staff=True).exists():
        return None, None
    if membership is None:
        return Role.VIEWER, frozenset()
    return Role(membership.role), scopes_for_role(membership.role)


def tenant_access(request: Any, slug: str, scope: str | None) -> TenantAccess:
    """The caller of `request` (a Django or DRF request) in tenant `slug`, allowed `scope`.

    `scope=None` resolves the standing without checking a scope (the API then answers a method
    the view lacks with 405). Raises `NotFound` or `PermissionRefused`, see the module docstring.
    """
    tenant = selectors.tenant_get_by_slug(slug)  # NotFound(NO_SUCH_TENANT) when missing
    principal = getattr(request, "user", None)
    key = getattr(request, "auth", None)
    active = tenant.status == TenantStatus.ACTIVE
    access: TenantAccess
    if isinstance(key, KeyContext) and not isinstance(principal, User):
        if key.tenant_id != tenant.pk:
            raise NotFound(NO_SUCH_TENANT)
        role, cap = _creator_standing(tenant, key.created_by_id)
        # A key never does more than its creator may do now: a demoted creator's keys shrink,
        # a removed creator's keys hold nothing.
        scopes = key.scopes if cap is None else key.scopes & cap
        access = TenantAccess(
            tenant=tenant, user=None, key=key, membership=None, role=role, scopes=scopes, writable=active
        )
    elif isinstance(principal, User) and principal.is_authenticated and principal.is_staff:
        membership = selectors.membership_get(tenant=tenant, user=principal)
        access = TenantAccess(
            tenant=tenant,
            user=principal,
            key=None,
            membership=membership,
            role=None,
            scopes=STAFF_SCOPES,
            writable=True,
            is_staff=True,
        )
    elif isinstance(principal, User) and principal.is_authenticated:
        membership = selectors.membership_get(tenant=tenant, user=principal)
        if membership is None or tenant.status == TenantStatus.CLOSED:
            # A closed tenant is gone for its members; only staff look back at it.
            raise NotFound(NO_SUCH_TENANT)
        access = TenantAccess(
            tenant=tenant,
            user=principal,
            key=None,
            membership=membership,
            role=Role(membership.role),
            scopes=scopes_for_role(membership.role),
            writable=active,
        )
    else:
        raise NotFound(NO_SUCH_TENANT)  # the doors sign people in first; nobody gets in anonymously
    if scope is not None:
        access.require(scope)
    return access
