"""The tenant-scoped base view of the management API.

`TenantScopedAPIView` is the API's side of the one door to tenant data (`tenants.access`): it
resolves `<slug>`, authenticates a session or an admin key, checks `required_scopes[method]`
against the permission table and sets `self.access`, `self.tenant`, `self.actor`,
`self.membership`, `self.scopes`. Subclass it:

    class UsageListApi(TenantScopedAPIView):
        required_scopes = {"GET": "usage:read"}

        def get(self, request: Request, slug: str) -> Response:
            rows = usage_list(tenant=self.tenant)  # always filter by self.tenant
            ...

A member of another tenant, an admin key of another tenant and a missing tenant all get the
same 404. Authenticated but lacking the scope: 403. Not authenticated: 401. The views that need
no tenant (`PlatformAPIView`, `PublicAPIView`, `StaffAPIView`) live in `core.api.views`.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request

from core.api.views import SAFE_METHODS, PlatformAPIView
from core.audit import Actor
from tenants.access import TenantAccess, tenant_access
from tenants.models import Membership, Tenant
from tenants.permissions import Role
from tenants.types import KeyContext


class TenantScopedAPIView(PlatformAPIView):
    """Resolves the tenant and checks the caller's scope; see the module docstring."""

    # HTTP method → scope it needs; a method missing here is refused with 403.
    required_scopes: dict[str, str] = {}

    access: TenantAccess
    tenant: Tenant
    actor: Actor
    membership: Membership | None
    scopes: frozenset[str]
    key_context: KeyContext | None
    is_staff: bool
    # The role the caller acts with: a member's role, an admin key's creator's; None for staff.
    acting_role: Role | None
    # The user on whose behalf the caller acts (a session's user, a key's creator).
    acting_user_id: int | None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if not getattr(request.user, "is_authenticated", False):
            raise exceptions.NotAuthenticated()
        method = (request.method or "GET").upper()
        if method in ("HEAD", "OPTIONS"):
            method = "GET"
        handled = hasattr(self, method.lower())
        scope = self.required_scopes.get(method) if handled else None
        access = tenant_access(request, kwargs.get("slug", ""), scope)
        self._adopt(request, access)
        # Whatever the scope, a method that writes is refused while the tenant is read-only.
        if (request.method or "GET").upper() not in SAFE_METHODS:
            access.require_writable()
        if not handled:
            raise exceptions.MethodNotAllowed(method)
        if scope is None:
            raise exceptions.PermissionDenied("This needs the unknown scope.")

    def _adopt(self, request: Request, access: TenantAccess) -> None:
        self.access = access
        self.tenant = access.tenant
        self.membership = access.membership
        self.scopes = access.scopes
        self.key_context = access.key
        self.is_staff = access.is_staff
        self.acting_role = access.role
        self.acting_user_id = access.acting_user_id
        self.actor = self.session_actor(request)

    @property
    def manages_all_keys(self) -> bool:
        """Owners, admins and staff manage every key; other roles only their own."""
        return self.access.manages_all_keys
