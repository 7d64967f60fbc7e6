"""Who may see which dashboard page: the same permission table as the management API.

Every tenant page is wrapped by `tenant_page(scope)`. It goes through the same door as the
management API (`tenants.access.tenant_access`): the signed-in user's membership (platform staff
hold every scope everywhere), 404 for a tenant the user does not belong to (exactly like a
missing one), 403 when the role lacks the scope or when the page writes to a suspended tenant.
The decorator records the scope on the view so the tests can build the role-by-page matrix
from `tenants.permissions` instead of listing cases by hand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, cast

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from core.audit import Actor, actor_for
from core.errors import NotFound, PermissionRefused
from tenants.access import TenantAccess, tenant_access
from tenants.models import User

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TenantView(Protocol):
    required_scope: str | None
    staff_only: bool

    def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase: ...


def actor_from_request(request: HttpRequest) -> Actor:
    """The audit actor for a person using the dashboard."""
    user = cast(User, request.user)
    return actor_for(request, user_id=user.pk, label=user.email)


def page_user(ctx: TenantAccess) -> User:
    """The signed-in person a dashboard page acts for (the dashboard takes no keys)."""
    assert ctx.user is not None
    return ctx.user


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
            try:
                ctx = tenant_access(request, slug, scope)
                if request.method not in SAFE_METHODS:
                    ctx.require_writable()  # any POST, whatever its scope, writes
            except NotFound as exc:
                raise Http404(exc.message) from exc
            except PermissionRefused as exc:
                if exc.code == "tenant_suspended":
                    raise PermissionDenied(exc.message) from exc
                raise PermissionDenied(f"Your role does not include {scope}.") from exc
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
