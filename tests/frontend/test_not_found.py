"""Missing rows on dashboard pages: selectors raise `core.errors.NotFound`, and the page answers
Django's 404 page (through `core.middleware.NotFoundMiddleware`), as it did with Http404."""

from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from core.errors import NotFound, PermissionRefused
from core.middleware import NotFoundMiddleware
from tenants.models import APIKey
from tenants.permissions import Role
from tests.frontend.conftest import World, client_for


def _templates(response: HttpResponse) -> list[str]:
    return [t.name for t in getattr(response, "templates", []) if t.name]


def test_a_missing_invoice_is_the_404_page(world: World) -> None:
    response = client_for(world.users[Role.OWNER]).get("/t/acme/billing/invoices/999999/")
    assert response.status_code == 404
    assert "404.html" in _templates(response)
    assert b"Not found" in response.content


def test_another_tenants_invoice_looks_missing(world: World) -> None:
    assert world.invoice is not None
    response = client_for(world.outsider).get(f"/t/globex/billing/invoices/{world.invoice.pk}/")
    assert response.status_code == 404
    assert "404.html" in _templates(response)


def test_revoking_a_missing_key_is_a_404_and_changes_nothing(world: World) -> None:
    before = APIKey.objects.filter(revoked_at__isnull=True).count()
    response = client_for(world.users[Role.OWNER]).post("/t/acme/keys/999999/revoke/")
    assert response.status_code == 404
    assert "404.html" in _templates(response)
    assert APIKey.objects.filter(revoked_at__isnull=True).count() == before


def test_a_developer_cannot_reach_another_members_key(world: World) -> None:
    owners_key = world.keys[Role.OWNER][0]
    response = client_for(world.users[Role.DEVELOPER]).post(f"/t/acme/keys/{owners_key.pk}/revoke/")
    assert response.status_code == 404
    owners_key.refresh_from_db()
    assert owners_key.revoked_at is None


def test_a_missing_tenant_on_the_platform_pages_is_a_404(world: World) -> None:
    response = client_for(world.staff).get("/platform/tenants/no-such-tenant/")
    assert response.status_code == 404
    assert "404.html" in _templates(response)


def test_the_api_keeps_its_own_error_body(world: World) -> None:
    response = client_for(world.users[Role.OWNER]).get("/api/v1/tenants/acme/keys/999999/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/tenants/acme/keys/1/", "/v1/models/x"])
def test_the_middleware_leaves_api_paths_alone(path: str) -> None:
    middleware = NotFoundMiddleware(lambda request: HttpResponse())
    request = RequestFactory().get(path)
    assert middleware.process_exception(request, NotFound()) is None


def test_the_middleware_leaves_other_errors_alone() -> None:
    middleware = NotFoundMiddleware(lambda request: HttpResponse())
    request = RequestFactory().get("/t/acme/")
    assert middleware.process_exception(request, PermissionRefused("no")) is None
