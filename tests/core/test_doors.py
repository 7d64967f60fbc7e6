"""Every door records the same actor: the API, the dashboard and the Django admin read the client
address (behind MMORCH_TRUSTED_PROXIES) and the request id the same way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tenants.models import AuditEvent, Membership
from tenants.permissions import Role
from tests import factories

pytestmark = pytest.mark.django_db

PROXIED = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "1.2.3.4, 198.51.100.7"}


@pytest.fixture(autouse=True)
def _behind_a_proxy(settings: Any) -> None:
    settings.MMORCH_TRUSTED_PROXIES = ["10.0.0.0/8"]
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_ENABLED = False


def _role_change_event(membership: Membership) -> AuditEvent:
    event = AuditEvent.objects.filter(action="membership.role_change", target_id=str(membership.pk)).first()
    assert event is not None
    return event


def test_api_and_dashboard_record_the_same_client_address_through_a_trusted_proxy() -> None:
    tenant, users = factories.tenant_with_members("doors")
    owner = users[Role.OWNER]
    developer = Membership.objects.get(tenant=tenant, user=users[Role.DEVELOPER])
    viewer = Membership.objects.get(tenant=tenant, user=users[Role.VIEWER])

    api = APIClient()
    api.force_login(owner)
    response = api.patch(
        f"/api/v1/tenants/{tenant.slug}/members/{developer.pk}/",
        data=json.dumps({"role": "finance"}),
        content_type="application/json",
        **PROXIED,
    )
    assert response.status_code == 200, response.content
    api_event = _role_change_event(developer)

    dashboard = Client()
    dashboard.force_login(owner)
    url = reverse("frontend:member_role", kwargs={"slug": tenant.slug, "membership_id": viewer.pk})
    response = dashboard.post(url, {"role": "finance"}, **PROXIED)  # type: ignore[arg-type]
    assert response.status_code == 302
    dashboard_event = _role_change_event(viewer)

    assert api_event.ip == dashboard_event.ip == "198.51.100.7"
    assert api_event.request_id and dashboard_event.request_id
    assert api_event.request_id != dashboard_event.request_id


def test_the_django_admin_records_the_request_id_and_address() -> None:
    staff = factories.staff_user()
    staff.is_superuser = True
    staff.save()
    tenant = factories.tenant("admin-door")
    client = Client()
    client.force_login(staff)
    response = client.post(
        "/admin/tenants/tenant/",
        {"action": "suspend", "_selected_action": [tenant.pk]},
        **PROXIED,  # type: ignore[arg-type]
    )
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="tenant.suspend", tenant=tenant)
    assert event.actor_user == staff
    assert event.request_id and event.request_id == response["x-request-id"]
    assert event.ip == "198.51.100.7"
