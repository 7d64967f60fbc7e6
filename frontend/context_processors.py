"""Navigation for every page: the tenant switcher and the tenant's sections the user may open."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest
from django.urls import reverse

from tenants.access import TenantAccess
from tenants.models import Tenant, User
from tenants.selectors import tenant_list_for_user

# (section, label, url name, scope): the same scopes the pages themselves check.
SECTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("overview", "Overview", "frontend:overview", "tenant:read"),
    ("keys", "API keys", "frontend:keys", "keys:read"),
    ("members", "Members", "frontend:members", "members:read"),
    ("usage", "Usage", "frontend:usage", "usage:read"),
    ("slo", "Service levels", "frontend:slo", "usage:read"),
    ("models", "Models", "frontend:models", "models:read"),
    ("billing", "Billing", "frontend:billing", "billing:read"),
    ("audit", "Audit log", "frontend:audit", "audit:read"),
)


@dataclass
class NavItem:
    key: str
    label: str
    url: str


@dataclass
class Nav:
    tenants: list[Tenant] = field(default_factory=list)
    tenant: Tenant | None = None
    role: str = ""
    section: str = ""
    items: list[NavItem] = field(default_factory=list)


def nav(request: HttpRequest) -> dict[str, Any]:
    result = Nav(section=getattr(request, "nav_section", ""))
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav": result}
    assert isinstance(user, User)
    # Staff see every tenant; a long list would swamp the menu, so they get the platform page too.
    result.tenants = list(tenant_list_for_user(user)[:50])
    ctx: TenantAccess | None = getattr(request, "tenant_ctx", None)
    if ctx is not None:
        result.tenant = ctx.tenant
        result.role = ctx.role_label
        result.items = [
            NavItem(key, label, reverse(name, args=[ctx.tenant.slug]))
            for key, label, name, scope in SECTIONS
            if ctx.can(scope)
        ]
    return {"nav": result}
