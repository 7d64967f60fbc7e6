"""Every dashboard page x every role, with the expected answer computed from the permission table.

A page declares its scope through `tenant_page(scope)` (or `staff_page`); this test reads the
declaration off the URL patterns, asks `tenants.permissions` whether each role holds it, and
checks the answer: allowed pages work, pages outside the role answer 403, another tenant's
pages answer 404 exactly like missing ones, and anonymous visitors are sent to sign in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.test import RequestFactory
from django.urls import URLPattern, reverse
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate

from frontend import urls as frontend_urls
from frontend.access import tenant_page
from tenants.api.base import TenantScopedAPIView
from tenants.models import Membership, Tenant, TenantStatus
from tenants.permissions import ALL_SCOPES, Role, role_has_scope
from tests.frontend.conftest import World, client_for

PUBLIC_PAGES = {
    "home",
    "login",
    "logout",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    "invitation_accept",
}
WHO = ["anonymous", "outsider", "staff", *(r.value for r in Role)]


@dataclass(frozen=True)
class Call:
    method: str
    kwargs: Callable[[World, str], dict[str, Any]]
    data: Callable[[World], dict[str, Any]] = lambda w: {}
    ok: tuple[int, ...] = (200,)


def _slug(w: World, who: str) -> dict[str, Any]:
    return {"slug": w.acme.slug}


def _own_key(w: World, who: str) -> dict[str, Any]:
    # Roles that may write keys act on their own; the rest try the owner's.
    role = Role(who) if who in Role.__members__.values() else Role.OWNER
    key = w.keys.get(role, w.keys[Role.OWNER])[0]
    return {"slug": w.acme.slug, "key_id": key.pk}


def _developer_membership(w: World, who: str) -> dict[str, Any]:
    membership = Membership.objects.get(tenant=w.acme, user=w.users[Role.DEVELOPER])
    return {"slug": w.acme.slug, "membership_id": membership.pk}


def _invitation(w: World, who: str) -> dict[str, Any]:
    assert w.invitation is not None
    return {"slug": w.acme.slug, "invitation_id": w.invitation.pk}


def _invoice(w: World, who: str) -> dict[str, Any]:
    assert w.invoice is not None
    return {"slug": w.acme.slug, "invoice_id": w.invoice.pk}


def _model(w: World, who: str) -> dict[str, Any]:
    assert w.model is not None
    return {"name": w.model.name}


def _none(w: World, who: str) -> dict[str, Any]:
    return {}


# How to call each guarded page, and what a permitted call answers.
CALLS: dict[str, Call] = {
    "overview": Call("get", _slug),
    "overview_status": Call("get", _slug),
    "keys": Call("get", _slug),
    "key_create": Call("post", _slug, lambda w: {"name": "matrix key", "kind": "inference"}),
    "key_revoke": Call("post", _own_key, ok=(302,)),
    "key_rotate": Call("post", _own_key, lambda w: {"grace_seconds": "0"}),
    "members": Call("get", _slug),
    "invitation_create": Call("post", _slug, lambda w: {"email": "new@example.com", "role": "viewer"}, ok=(302,)),
    "member_role": Call("post", _developer_membership, lambda w: {"role": "viewer"}, ok=(302,)),
    "member_remove": Call("post", _developer_membership, ok=(302,)),
    "invitation_revoke": Call("post", _invitation, ok=(302,)),
    "audit": Call("get", _slug),
    "usage": Call("get", _slug),
    "models": Call("get", _slug),
    "slo": Call("get", _slug),
    "billing": Call("get", _slug),
    "billing_invoices_csv": Call("get", _slug),
    "billing_lines_csv": Call("get", _slug),
    "invoice_detail": Call("get", _invoice),
    "invoice_pdf": Call("get", _invoice),
    "platform_tenants": Call("get", _none),
    "platform_tenant_create": Call("post", _none, lambda w: {"slug": "newco", "name": "NewCo"}, ok=(302,)),
    "platform_tenant": Call("get", _slug),
    "platform_tenant_status": Call("post", _slug, lambda w: {"action": "suspend"}, ok=(302,)),
    "platform_tenant_limits": Call("post", _slug, lambda w: {"scheduling_weight": "2"}, ok=(302,)),
    "platform_tenant_plan": Call("post", _slug, lambda w: {"plan": str(w.plan.pk)}, ok=(302,)),  # type: ignore[union-attr]
    "platform_nodes": Call("get", _none),
    "platform_models": Call("get", _none),
    "platform_slo": Call("get", _none),
    "platform_cost": Call("get", _none),
    "platform_cost_csv": Call("get", _none),
    "platform_model_traffic": Call("post", _model, lambda w: {"weight-v1": "50"}, ok=(302,)),
}


def _guarded() -> list[tuple[str, str | None, bool]]:
    pages = []
    for pattern in frontend_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        name = pattern.name or ""
        if name in PUBLIC_PAGES:
            continue
        scope = getattr(pattern.callback, "required_scope", None)
        staff_only = getattr(pattern.callback, "staff_only", False)
        pages.append((name, scope, staff_only))
    return pages


GUARDED = _guarded()


def test_every_page_is_guarded_and_covered() -> None:
    """A new page must declare a scope (or be staff-only) and appear in CALLS."""
    for name, scope, staff_only in GUARDED:
        assert scope is not None or staff_only, f"{name} declares no scope"
        assert name in CALLS, f"{name} is missing from the matrix"
    assert set(CALLS) == {name for name, _, _ in GUARDED}


STATUSES = [TenantStatus.ACTIVE, TenantStatus.SUSPENDED]
# Staff pass the door on a suspended tenant, but these services refuse to hand out new
# credentials there: a new key, an invitation (the form again, 409), a rotated key (back to the list).
SERVICES_REFUSE_WHILE_SUSPENDED = {"key_create": 409, "key_rotate": 302, "invitation_create": 409}


def expected(name: str, who: str, scope: str | None, staff_only: bool, call: Call, status: str) -> tuple[int, ...]:
    if who == "anonymous":
        return (302,)
    if who == "staff":
        if status != TenantStatus.ACTIVE and name in SERVICES_REFUSE_WHILE_SUSPENDED:
            return (SERVICES_REFUSE_WHILE_SUSPENDED[name],)
        return call.ok
    if staff_only:
        return (403,)
    if who == "outsider":
        return (404,)
    assert scope is not None
    if status != TenantStatus.ACTIVE and (scope.endswith(":write") or call.method == "post"):
        return (403,)  # a suspended tenant is read-only, for every role
    return call.ok if role_has_scope(who, scope) else (403,)


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize(("name", "scope", "staff_only"), GUARDED, ids=[g[0] for g in GUARDED])
def test_page_answers_each_role_as_the_permission_table_says(
    world: World, name: str, scope: str | None, staff_only: bool, status: str
) -> None:
    call = CALLS[name]
    if status != TenantStatus.ACTIVE:
        Tenant.objects.filter(pk=world.acme.pk).update(status=status)
        world.acme.refresh_from_db()
    for who in WHO:
        url = reverse(f"frontend:{name}", kwargs=call.kwargs(world, who))
        client = client_for(world.user(who))
        # Each role's call runs in a savepoint that is rolled back, so a permitted write
        # (a revoke, a removal) does not change what the next role meets.
        with transaction.atomic():
            response = getattr(client, call.method)(url, call.data(world))
            transaction.set_rollback(True)
        want = expected(name, who, scope, staff_only, call, status)
        assert response.status_code in want, f"{name} as {who} ({status}): {response.status_code}, expected {want}"
        if who == "anonymous":
            assert response["Location"].startswith("/login/?next=")


def _api_decision(request: Any, slug: str, scope: str) -> int:
    """The status the management API's base view answers with for `scope`."""

    class Probe(TenantScopedAPIView):
        required_scopes = {"GET": scope, "POST": scope}

        def get(self, request: Any, slug: str) -> Response:
            return Response({})

        post = get

    response = Probe.as_view()(request, slug=slug)
    return 200 if response.status_code < 300 else int(response.status_code)


def _dashboard_decision(request: HttpRequest, slug: str, scope: str) -> int:
    """The status the dashboard's `tenant_page` answers with for `scope`."""
    page = tenant_page(scope, section="probe")(lambda request, ctx: HttpResponse("ok"))
    try:
        page(request, slug)
    except Http404:
        return 404
    except PermissionDenied:
        return 403
    return 200


@pytest.mark.parametrize("status", STATUSES)
def test_the_api_and_the_dashboard_doors_agree(world: World, status: str) -> None:
    """For every role, scope and tenant status, both doors answer allowed, 403 or 404 alike."""
    Tenant.objects.filter(pk=world.acme.pk).update(status=status)
    api_factory, dashboard_factory = APIRequestFactory(), RequestFactory()
    for who in ["outsider", "staff", *(r.value for r in Role)]:
        user = world.user(who)
        assert user is not None
        for scope in ALL_SCOPES:
            # The API asks with the method that uses the scope; the dashboard's write pages are POSTs.
            method = "post" if scope.endswith(":write") else "get"
            api_request = getattr(api_factory, method)("/probe/", format="json")
            force_authenticate(api_request, user=user)
            dashboard_request = getattr(dashboard_factory, method)("/probe/")
            dashboard_request.user = user
            api = _api_decision(api_request, world.acme.slug, scope)
            dashboard = _dashboard_decision(dashboard_request, world.acme.slug, scope)
            assert api == dashboard, (who, scope, status, api, dashboard)
            if who == "outsider":
                assert api == 404
            elif who == "staff":
                assert api == 200
            elif status == TenantStatus.SUSPENDED and scope.endswith(":write"):
                assert api == 403
            else:
                assert api == (200 if role_has_scope(who, scope) else 403), (who, scope, status)
