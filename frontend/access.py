"""Who may see which dashboard page: the same permission table as the management API.

Every tenant page is wrapped by `tenant_page(scope)`. It resolves the tenant from the URL,
finds the signed-in user's membership (platform staff hold every scope everywhere), answers
404 for a tenant the user does not belong to (exactly like a missing one) and 403 when the
role lacks the scope. The decorator records the scope on the view so the tests can build the
role-by-page matrix from `tenants.permissions` instead of listing cases by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from core.audit import Actor
from tenants.models import Membership, Tenant, TenantStatus, User
from tenants.permissions import STAFF_SCOPES, Role, scopes_for_role
from tenants.selectors import membership_get, tenant_get_by_slug


@dataclass(frozen=True)
class TenantContext:
    """The tenant a page is about and what the signed-in person may do in it."""

    tenant: Tenant
    user: User
    membership: Membership | None  # None for platform staff without a membership
    scopes: frozenset[str]

    @property
    def role(self) -> str:
        if self.membership is not None:
            return self.membership.role
        return "staff"

    @property
    def is_staff(self) -> bool:
        return bool(self.user.is_staff)

    def can(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def manages_all_keys(self) -> bool:
        """Owners, admins and staff see every key of the tenant; others only their own."""
        return self.is_staff or self.role in (Role.OWNER, Role.ADMIN)


class TenantView(Protocol):
    required_scope: str | None
    staff_only: bool

    def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase: ...


def actor_from_request(request: HttpRequest) -> Actor:
    """The audit actor for a person using the dashboard."""
    user = cast(User, request.user)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    ip = forwarded.split(",")[0].strip() if forwarded else request.META.get("REMOTE_ADDR")
    return Actor(
        user_id=user.pk,
        label=user.email,
        ip=ip or None,
        request_id=getattr(request, "request_id", ""),
    )


def tenant_context_get(*, user: User, slug: str) -> TenantContext:
    """The caller's standing in a tenant; 404 when it is not theirs (or does not exist)."""
    tenant = tenant_get_by_slug(slug)
    membership = membership_get(tenant=tenant, user=user)
    if tenant.status == TenantStatus.CLOSED and not user.is_staff:
        # A closed tenant is gone for its members; only staff look back at it.
        raise Http404("No such tenant")
    if membership is not None:
        scopes = STAFF_SCOPES if user.is_staff else scopes_for_role(membership.role)
    elif user.is_staff:
        scopes = STAFF_SCOPES
    else:
        raise Http404("No such tenant")
    return TenantContext(tenant=tenant, user=user, membership=membership, scopes=scopes)


def _require_login(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return None


def tenant_page(scope: str, *, section: str) -> Callable[[Callable[..., HttpResponseBase]], TenantView]:
    """A tenant page that needs `scope`; sets `request.tenant_ctx` (and the nav section)."""

    def wrap(view: Callable[..., HttpResponseBase]) -> TenantView:
        @functools.wraps(view)
        def inner(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if (redirect := _require_login(request)) is not None:
                return redirect
            ctx = tenant_context_get(user=cast(User, request.user), slug=slug)
            if not ctx.can(scope):
                raise PermissionDenied(f"Your role does not include {scope}.")
            request.tenant_ctx = ctx  # type: ignore[attr-defined]
            request.nav_section = section  # type: ignore[attr-defined]
            return view(request, ctx, *args, **kwargs)

        tv = cast(TenantView, inner)
        tv.required_scope = scope
        tv.staff_only = False
        return tv

    return wrap


def staff_page(view: Callable[..., HttpResponseBase]) -> TenantView:
    """A platform page: staff only, 403 for everyone else who is signed in."""

    @functools.wraps(view)
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if (redirect := _require_login(request)) is not None:
            return redirect
        if not request.user.is_staff:
            raise PermissionDenied("Platform staff only.")
        request.nav_section = "platform"  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    tv = cast(TenantView, inner)
    tv.required_scope = None
    tv.staff_only = True
    return tv


def signed_in_page(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Any signed-in person."""

    @functools.wraps(view)
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if (redirect := _require_login(request)) is not None:
            return redirect
        return view(request, *args, **kwargs)

    return inner
