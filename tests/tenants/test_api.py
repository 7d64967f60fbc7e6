"""The management API beyond authorization: list query counts, the schema, tenant lifecycle,
limits, and the Django admin."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from tenants import selectors, services
from tenants.models import APIKey, AuditEvent, Invitation, Tenant, User
from tenants.permissions import Role
from tests import factories

pytestmark = pytest.mark.django_db


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _grow(tenant: Tenant, users: dict[Role, Any], n: int) -> None:
    for i in range(n):
        factories.member(tenant, Role.VIEWER)
        factories.inference_key(tenant, users[Role.DEVELOPER], name=f"k{i}")
        services.invitation_create(
            tenant=tenant,
            email=f"{factories.unique('inv')}@example.com",
            role="viewer",
            actor=factories.SYSTEM,
            invited_by=users[Role.OWNER],
            send=False,
        )


LIST_URLS = ["members/", "invitations/", "keys/", "audit-events/", "limits/", ""]


@pytest.mark.parametrize("caller", ["session", "admin-key"])
def test_list_endpoints_use_a_constant_number_of_queries(caller: str) -> None:
    tenant, users = factories.tenant_with_members("qcount")
    if caller == "session":
        client = _client(users[Role.OWNER])
    else:
        _, raw = factories.admin_key(tenant, users[Role.OWNER])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    urls = [f"/api/v1/tenants/qcount/{suffix}" for suffix in LIST_URLS] + ["/api/v1/tenants/"]
    for url in urls:
        client.get(url)  # warm: sessions, key cache
    _grow(tenant, users, 2)
    small: dict[str, int] = {}
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        small[url] = len(queries)
    _grow(tenant, users, 10)
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        assert len(queries) == small[url], (url, [q["sql"] for q in queries.captured_queries])
    # Pinned: session (2) + tenant + membership + count + page; a key skips the session but
    # looks up its creator (membership + staff flag).
    assert small["/api/v1/tenants/qcount/keys/"] == (6 if caller == "session" else 5)


def test_schema_is_valid_and_covers_the_api() -> None:
    response = _client(factories.staff_user()).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    paths = set(schema["paths"])
    for resource in ("members", "invitations", "keys", "limits", "audit-events"):
        assert f"/api/v1/tenants/{{slug}}/{resource}/" in paths
    assert "/api/v1/tenants/{slug}/keys/{key_id}/rotate/" in paths
    assert schema["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    create = schema["paths"]["/api/v1/tenants/{slug}/keys/"]["post"]
    ref = create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "secret" in schema["components"]["schemas"][ref]["properties"]


def test_tenant_lifecycle_through_the_api(django_capture_on_commit_callbacks: Any) -> None:
    staff = _client(factories.staff_user())
    with django_capture_on_commit_callbacks(execute=True):
        created = staff.post(
            "/api/v1/tenants/",
            {
                "slug": "life",
                "name": "Life Inc",
                "billing_email": "Billing@Life.example",
                "owner_email": "boss@life.example",
            },
            format="json",
        )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "active" and body["billing_email"] == "billing@life.example"
    invitation = Invitation.objects.get(pk=body["owner_invitation_id"])
    assert invitation.role == "owner" and mail.outbox[0].to == ["boss@life.example"]

    tenant = Tenant.objects.get(slug="life")
    owner = factories.member(tenant, Role.OWNER)
    dev = factories.member(tenant, Role.DEVELOPER)
    _, raw = factories.inference_key(tenant, dev)
    owner_client = _client(owner)
    assert services.key_authenticate(raw) is not None

    assert staff.post("/api/v1/tenants/life/suspend/").json()["status"] == "suspended"
    assert services.key_authenticate(raw) is None
    # Data stays readable; nothing can be changed by members.
    assert owner_client.get("/api/v1/tenants/life/keys/").status_code == 200
    blocked = owner_client.post("/api/v1/tenants/life/keys/", {"name": "k"}, format="json")
    assert blocked.status_code == 403 and blocked.json()["error"]["code"] == "tenant_suspended"
    assert staff.post("/api/v1/tenants/life/suspend/").status_code == 200  # idempotent

    assert staff.post("/api/v1/tenants/life/reactivate/").json()["status"] == "active"
    assert services.key_authenticate(raw) is not None
    assert staff.post("/api/v1/tenants/life/close/").json()["status"] == "closed"
    assert services.key_authenticate(raw) is None
    # Closed tenants disappear for members, and closing is final.
    assert owner_client.get("/api/v1/tenants/life/keys/").status_code == 404
    assert "life" not in [t["slug"] for t in owner_client.get("/api/v1/tenants/").json()["results"]]
    final = staff.post("/api/v1/tenants/life/reactivate/")
    assert final.status_code == 409 and final.json()["error"]["code"] == "invalid_status_transition"
    assert staff.post("/api/v1/tenants/nope/suspend/").status_code == 404


def test_tenant_list_shows_the_callers_tenants_and_role() -> None:
    _acme, acme_users = factories.tenant_with_members("acme")
    globex, _ = factories.tenant_with_members("globex")
    services.membership_create(tenant=globex, user=acme_users[Role.FINANCE], role="viewer", actor=factories.SYSTEM)
    listed = _client(acme_users[Role.FINANCE]).get("/api/v1/tenants/").json()["results"]
    assert [(t["slug"], t["role"]) for t in listed] == [("acme", "finance"), ("globex", "viewer")]
    assert [t["slug"] for t in _client(acme_users[Role.OWNER]).get("/api/v1/tenants/").json()["results"]] == ["acme"]
    everyone = _client(factories.staff_user()).get("/api/v1/tenants/").json()["results"]
    assert {"acme", "globex"} <= {t["slug"] for t in everyone}
    _, raw = factories.admin_key(globex, None, ["tenant:read"])
    key_client = APIClient()
    key_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert [t["slug"] for t in key_client.get("/api/v1/tenants/").json()["results"]] == ["globex"]


def test_inference_keys_and_bad_bearers_are_401() -> None:
    tenant, users = factories.tenant_with_members("bearer")
    _, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    for header in [f"Bearer {raw}", "Bearer sk-admin-nope", "Bearer", "Bearer a b"]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.get("/api/v1/tenants/bearer/members/")
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_limits_and_key_overrides_reach_key_authenticate() -> None:
    tenant, users = factories.tenant_with_members("lim")
    key, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    staff = _client(factories.staff_user())
    put = staff.put(
        "/api/v1/tenants/lim/limits/",
        {
            "requests_per_minute": 600,
            "tokens_per_minute": 100_000,
            "max_concurrent_requests": 8,
            "monthly_token_budget": 10_000_000,
            "monthly_spend_cap": "250.50",
            "scheduling_weight": 3,
            "max_prompt_tokens": 4096,
            "max_output_tokens": 1024,
            "max_messages": 64,
            "max_choices": 2,
        },
        format="json",
    )
    assert put.status_code == 200 and put.json()["monthly_spend_cap"] == "250.500000"
    assert put.json()["max_choices"] == 2
    assert services.key_authenticate(raw) is not None
    owner = _client(users[Role.OWNER])
    patched = owner.patch(
        f"/api/v1/tenants/lim/keys/{key.pk}/", {"requests_per_minute": 60, "monthly_spend_cap": "10"}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["requests_per_minute"] == 60
    context = services.key_authenticate(raw)
    assert context is not None
    assert context.key_limits.requests_per_minute == 60 and context.tenant_limits.requests_per_minute == 600
    assert context.key_limits.monthly_spend_cap == Decimal("10")
    assert context.key_limits.tokens_per_minute == 100_000 and context.key_limits.scheduling_weight == 3
    assert context.key_limits.max_choices == 2
    key.refresh_from_db()
    effective = selectors.limits_effective(key)
    assert effective == context.key_limits
    # Members read limits, only staff write them.
    assert owner.get("/api/v1/tenants/lim/limits/").json()["scheduling_weight"] == 3
    assert owner.patch("/api/v1/tenants/lim/limits/", {"scheduling_weight": 9}, format="json").status_code == 403
    # Clearing an override inherits the tenant's value again.
    owner.patch(f"/api/v1/tenants/lim/keys/{key.pk}/", {"requests_per_minute": None}, format="json")
    context = services.key_authenticate(raw)
    assert context is not None and context.key_limits.requests_per_minute == 600


def test_admin_pages_and_actions() -> None:
    staff = factories.staff_user()
    staff.is_superuser = True
    staff.save()
    client = _client(staff)
    tenant, users = factories.tenant_with_members("adm")
    key, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    for model in ["tenant", "user", "membership", "apikey", "tenantlimits", "auditevent", "invitation"]:
        assert client.get(f"/admin/tenants/{model}/").status_code == 200, model
    page = client.get(f"/admin/tenants/apikey/{key.pk}/change/")
    assert page.status_code == 200
    assert key.digest not in page.content.decode() and raw not in page.content.decode()
    assert client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").status_code == 200
    assert client.get("/admin/tenants/user/add/").status_code == 200
    # Audit events cannot be edited.
    event = AuditEvent.objects.filter(tenant=tenant).first()
    assert event is not None
    view = client.get(f"/admin/tenants/auditevent/{event.pk}/change/")
    assert view.status_code == 200 and 'name="_save"' not in view.content.decode()

    response = client.post(
        "/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [tenant.pk]}, follow=True
    )
    assert response.status_code == 200
    tenant.refresh_from_db()
    assert tenant.status == "suspended"
    assert AuditEvent.objects.filter(action="tenant.suspend", actor_user=staff).exists()
    assert services.key_authenticate(raw) is None
    client.post("/admin/tenants/tenant/", {"action": "reactivate", "_selected_action": [tenant.pk]})
    tenant.refresh_from_db()
    assert tenant.status == "active"
    client.post("/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert APIKey.objects.get(pk=key.pk).revoked_at is not None
    assert services.key_authenticate(raw) is None
    # A new tenant from the admin goes through the service (limits row, audit event).
    added = client.post("/admin/tenants/tenant/add/", {"slug": "from-admin", "name": "From Admin", "billing_email": ""})
    assert added.status_code == 302, added.content[:500]
    made = Tenant.objects.get(slug="from-admin")
    assert selectors.tenant_limits_get(made).pk is not None
    assert AuditEvent.objects.filter(action="tenant.create", tenant=made).exists()


def test_admin_edits_go_through_the_services() -> None:
    staff = factories.staff_user()
    client = _client(staff)
    tenant, users = factories.tenant_with_members("admedit")
    newcomer = factories.user("newcomer@example.com")
    added = client.post(
        "/admin/tenants/membership/add/", {"user": newcomer.pk, "tenant": tenant.pk, "role": "developer"}
    )
    assert added.status_code == 302, added.content[:300]
    assert AuditEvent.objects.filter(action="membership.create", actor_user=staff, tenant=tenant).exists()
    owner_row = tenant.memberships.get(user=users[Role.OWNER])
    # The last owner cannot be demoted from the admin either.
    client.post(f"/admin/tenants/membership/{owner_row.pk}/change/", {"role": "viewer"})
    owner_row.refresh_from_db()
    assert owner_row.role == "owner"
    limits = selectors.tenant_limits_get(tenant)
    changed = client.post(
        f"/admin/tenants/tenantlimits/{limits.pk}/change/",
        {"requests_per_minute": "120", "scheduling_weight": "2", "monthly_spend_cap": "9.5"},
    )
    assert changed.status_code == 302, changed.content[:300]
    limits.refresh_from_db()
    assert (limits.requests_per_minute, limits.scheduling_weight, limits.monthly_spend_cap) == (120, 2, Decimal("9.5"))
    assert AuditEvent.objects.filter(action="limits.update", actor_user=staff).exists()
    created = client.post(
        "/admin/tenants/user/add/",
        {
            "email": "Made.In@Admin.example",
            "password1": "a-long-unusual-passphrase",
            "password2": "a-long-unusual-passphrase",
        },
    )
    assert created.status_code == 302, created.content[:300]
    assert User.objects.filter(email="made.in@admin.example").exists()


@pytest.mark.parametrize("bad", [0, -1, 129, "2", 1.5, True])
def test_a_choices_cap_outside_1_to_128_is_refused_and_changes_nothing(bad: object) -> None:
    factories.tenant_with_members("cap")
    staff = _client(factories.staff_user())
    before = staff.get("/api/v1/tenants/cap/limits/").json()
    response = staff.patch("/api/v1/tenants/cap/limits/", {"max_choices": bad}, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_choices"
    assert staff.get("/api/v1/tenants/cap/limits/").json() == before
