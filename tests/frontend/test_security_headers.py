"""Every dashboard page (every URL name in frontend/urls.py) and the admin carry the
Content-Security-Policy: nothing inline, nothing from another origin."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, reverse

from frontend import urls as frontend_urls
from tests.frontend.conftest import World, client_for
from tests.frontend.test_permission_matrix import CALLS

POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "font-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

# The pages outside the permission matrix, as an anonymous visitor meets them.
PUBLIC_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "home": ("get", {}),
    "login": ("get", {}),
    "logout": ("post", {}),
    "password_reset": ("get", {}),
    "password_reset_done": ("get", {}),
    "password_reset_confirm": ("get", {"uidb64": "MQ", "token": "set-password"}),
    "password_reset_complete": ("get", {}),
    "invitation_accept": ("get", {"token": "no-such-invitation"}),
}


def policy_of(header: str) -> dict[str, str]:
    directives = (part.strip().split(" ", 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in directives}


def test_every_url_name_is_visited() -> None:
    names = {p.name for p in frontend_urls.urlpatterns if isinstance(p, URLPattern)}
    assert names == set(CALLS) | set(PUBLIC_CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_guarded_page_sends_the_policy(world: World, name: str) -> None:
    call = CALLS[name]
    client = client_for(world.staff)
    with transaction.atomic():
        response = getattr(client, call.method)(
            reverse(f"frontend:{name}", kwargs=call.kwargs(world, "staff")), call.data(world)
        )
        transaction.set_rollback(True)
    assert response.status_code in call.ok, (name, response.status_code)
    assert policy_of(response["Content-Security-Policy"]) == POLICY


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
def test_public_page_sends_the_policy(db: None, name: str) -> None:
    method, kwargs = PUBLIC_CALLS[name]
    response = getattr(Client(), method)(reverse(f"frontend:{name}", kwargs=kwargs))
    assert response.status_code < 500, (name, response.status_code)
    assert policy_of(response["Content-Security-Policy"]) == POLICY


def test_the_admin_still_works_under_the_policy(world: World) -> None:
    assert Client().get("/admin/login/").status_code == 200
    client = client_for(world.staff)
    world.staff.is_superuser = True
    world.staff.save(update_fields=["is_superuser"])
    for path in ("/admin/", "/admin/tenants/tenant/", f"/admin/tenants/tenant/{world.acme.pk}/change/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert policy_of(response["Content-Security-Policy"]) == POLICY
