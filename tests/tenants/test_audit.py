"""Every mutation writes an audit event: who, what, target, before/after, IP, request id."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import services
from tenants.models import AuditEvent, Invitation, Membership, Tenant
from tenants.permissions import Role
from tests import factories

pytestmark = pytest.mark.django_db


def _last(action: str) -> AuditEvent:
    event = AuditEvent.objects.filter(action=action).order_by("-id").first()
    assert event is not None, f"no {action} event"
    return event


def test_every_api_mutation_is_audited_with_actor_ip_and_request_id() -> None:
    staff = factories.staff_user()
    staff_client = APIClient()
    staff_client.force_login(staff)

    def call(client: APIClient, method: str, url: str, body: Any = None, *, request_id: str) -> Any:
        response = client.generic(
            method,
            url,
            data=b"" if body is None else json.dumps(body),
            content_type="application/json",
            HTTP_X_REQUEST_ID=request_id,
            REMOTE_ADDR="203.0.113.7",
        )
        assert response.status_code < 300, response.content
        return response.json() if response.content else None

    call(staff_client, "POST", "/api/v1/tenants/", {"slug": "aud", "name": "Audited"}, request_id="r-create")
    event = _last("tenant.create")
    assert (event.actor_user_id, event.actor_label, event.request_id, event.ip) == (
        staff.pk,
        staff.email,
        "r-create",
        "203.0.113.7",
    )
    assert event.after == {"slug": "aud", "name": "Audited", "status": "active"}

    aud = Tenant.objects.get(slug="aud")
    owner = factories.member(aud, Role.OWNER)
    dev = factories.member(aud, Role.DEVELOPER)
    client = APIClient()
    client.force_login(owner)
    dev_row = Membership.objects.get(tenant=aud, user=dev)

    steps: list[tuple[str, str, str, Any, str]] = [
        ("PATCH", f"/api/v1/tenants/aud/members/{dev_row.pk}/", "membership.role_change", {"role": "viewer"}, "r1"),
        (
            "POST",
            "/api/v1/tenants/aud/invitations/",
            "invitation.create",
            {"email": "x@example.com", "role": "viewer"},
            "r2",
        ),
        ("POST", "/api/v1/tenants/aud/keys/", "key.create", {"name": "k"}, "r4"),
    ]
    for method, url, action, body, rid in steps:
        call(client, method, url, body, request_id=rid)
        event = _last(action)
        assert event.tenant_id == aud.pk and event.actor_user_id == owner.pk and event.request_id == rid
        assert event.ip == "203.0.113.7"
    assert _last("membership.role_change").before["role"] == "developer"
    assert _last("membership.role_change").after["role"] == "viewer"

    invitation = Invitation.objects.get(tenant=aud, email="x@example.com")
    call(client, "POST", f"/api/v1/tenants/aud/invitations/{invitation.pk}/revoke/", request_id="r3")
    assert _last("invitation.revoke").request_id == "r3"

    key_id = _last("key.create").target_id
    call(client, "PATCH", f"/api/v1/tenants/aud/keys/{key_id}/", {"name": "renamed"}, request_id="r5")
    update = _last("key.update")
    assert update.before == {"name": "k"} and update.after == {"name": "renamed"}
    rotated = call(client, "POST", f"/api/v1/tenants/aud/keys/{key_id}/rotate/", {"grace_seconds": 5}, request_id="r6")
    assert _last("key.rotate").after["new_key_id"] == rotated["id"]
    call(client, "POST", f"/api/v1/tenants/aud/keys/{rotated['id']}/revoke/", request_id="r7")
    assert _last("key.revoke").target_id == str(rotated["id"])
    call(client, "DELETE", f"/api/v1/tenants/aud/members/{dev_row.pk}/", request_id="r8")
    assert _last("membership.remove").before == {"user": dev.email, "role": "viewer"}

    call(staff_client, "PATCH", "/api/v1/tenants/aud/limits/", {"requests_per_minute": 5}, request_id="r9")
    limits = _last("limits.update")
    assert limits.before == {"requests_per_minute": None} and limits.after == {"requests_per_minute": 5}
    for verb in ("suspend", "reactivate", "close"):
        call(staff_client, "POST", f"/api/v1/tenants/aud/{verb}/", request_id=f"r-{verb}")
        assert _last(f"tenant.{verb}").request_id == f"r-{verb}"

    # A key as the actor.
    other, users = factories.tenant_with_members("aud2")
    key, raw = factories.admin_key(other, users[Role.ADMIN])
    key_client = APIClient()
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    call(key_client, "POST", "/api/v1/tenants/aud2/keys/", {"name": "by key", "kind": "admin"}, request_id="rk")
    by_key = _last("key.create")
    assert by_key.actor_key_id == key.pk and by_key.actor_user_id is None and by_key.actor_label == key.masked


def test_service_mutations_are_audited() -> None:
    tenant, _users = factories.tenant_with_members("svc")
    _, token = services.invitation_create(
        tenant=tenant, email="join@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    services.invitation_accept(token=token, password="a-long-unusual-passphrase", ip="198.51.100.1")
    accept = _last("invitation.accept")
    assert accept.actor_label == "join@example.com" and accept.ip == "198.51.100.1"
    services.membership_create(tenant=tenant, user=factories.user(), role="viewer", actor=factories.SYSTEM)
    assert _last("membership.create").tenant_id == tenant.pk
    # A change that changes nothing writes nothing.
    count = AuditEvent.objects.count()
    services.limits_update(tenant=tenant, actor=factories.SYSTEM)
    services.tenant_reactivate(tenant=tenant, actor=factories.SYSTEM)  # already active
    assert AuditEvent.objects.count() == count


def test_audit_events_filter_and_paginate() -> None:
    tenant, users = factories.tenant_with_members("flt")
    for n in range(5):
        factories.inference_key(tenant, users[Role.DEVELOPER], name=f"k{n}")
    old = AuditEvent.objects.filter(tenant=tenant).order_by("id").first()
    assert old is not None
    AuditEvent.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    client = APIClient()
    client.force_login(users[Role.OWNER])
    base = "/api/v1/tenants/flt/audit-events/"
    total = AuditEvent.objects.filter(tenant=tenant).count()
    assert client.get(base).json()["count"] == total

    keys = client.get(base, {"action": "key"}).json()
    assert keys["count"] == 5 and {e["action"] for e in keys["results"]} == {"key.create"}
    assert client.get(base, {"action": "key.revoke"}).json()["count"] == 0
    assert client.get(base, {"actor": "tests"}).json()["count"] == total

    since = (timezone.now() - timedelta(days=1)).isoformat()
    recent = client.get(base, {"created_after": since}).json()
    assert recent["count"] == total - 1 and old.pk not in [e["id"] for e in recent["results"]]
    older = client.get(base, {"created_before": since}).json()
    assert [e["id"] for e in older["results"]] == [old.pk]

    page = client.get(base, {"page_size": 2}).json()
    assert len(page["results"]) == 2 and page["next"] and page["previous"] is None
    second = client.get(page["next"]).json()
    assert {e["id"] for e in second["results"]}.isdisjoint({e["id"] for e in page["results"]})
    assert client.get(base, {"page": 999}).status_code == 404

    # Read-only: there is no way to write the audit log.
    assert client.post(base, {}, format="json").status_code == 405
    assert client.delete(base).status_code == 405
    # Roles without audit:read do not see it.
    viewer = APIClient()
    viewer.force_login(users[Role.VIEWER])
    assert viewer.get(base).status_code == 403
