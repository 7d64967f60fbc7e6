"""The authorization matrix, generated from the permission table.

Every management endpoint by every caller (each role in its own tenant, a member of another
tenant, platform staff, anonymous, an admin key with and without the scope, another tenant's
admin key) → the status the permission table implies. Adding a route without adding it here
fails `test_every_route_is_in_the_matrix`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from tenants import services
from tenants.models import Invitation, KeyKind, Membership, Tenant, TenantStatus, User
from tenants.permissions import ALL_SCOPES, Role, role_has_scope
from tests import factories

pytestmark = pytest.mark.django_db

STAFF_ONLY = "staff-only"
ANY_AUTHENTICATED = "any-authenticated"


@dataclass
class World:
    tenant: Tenant
    users: dict[Role, User]
    other: Tenant
    other_users: dict[Role, User]
    staff: User


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # format() with slug and the ids the setup returns
    scope: str  # a scope of the table, or STAFF_ONLY / ANY_AUTHENTICATED
    success: int
    # (world, caller user or None) -> path ids and request body
    setup: Callable[[World, User | None], tuple[dict[str, Any], Any]] = field(default=lambda world, caller: ({}, None))
    # The setup suspends the tenant: its own admin keys stop authenticating (401).
    suspends: bool = False


def _member(world: World, caller: User | None) -> tuple[dict[str, Any], Any]:
    target = factories.member(world.tenant, Role.VIEWER)
    membership = Membership.objects.get(tenant=world.tenant, user=target)
    return {"member_id": membership.pk}, None


def _member_patch(world: World, caller: User | None) -> tuple[dict[str, Any], Any]:
    ids, _ = _member(world, caller)
    return ids, {"role": "finance"}


def _suspended(world: World) -> tuple[dict[str, Any], Any]:
    services.tenant_suspend(tenant=world.tenant, actor=factories.SYSTEM)
    return {}, None


def _invitation_create(world: World, caller: User | None) -> tuple[dict[str, Any], Any]:
    return {}, {"email": f"{factories.unique('invitee')}@example.com", "role": "viewer"}


def _invitation(world: World, caller: User | None) -> tuple[dict[str, Any], Any]:
    invitation, _ = services.invitation_create(
        tenant=world.tenant,
        email=f"{factories.unique('pending')}@example.com",
        role="viewer",
        actor=factories.SYSTEM,
        send=False,
    )
    return {"invitation_id": invitation.pk}, None


def _key(world: World, caller: User | None) -> dict[str, Any]:
    # Owned by the caller, so roles that manage only their own keys reach it too.
    key, _ = services.key_create(
        tenant=world.tenant,
        created_by=caller,
        name="target",
        kind=KeyKind.INFERENCE,
        scopes=["inference"],
        grantable_scopes=frozenset({"inference"}),
        actor=factories.SYSTEM,
    )
    return {"key_id": key.pk}


ENDPOINTS: list[Endpoint] = [
    Endpoint("tenant-list", "GET", "/api/v1/tenants/", ANY_AUTHENTICATED, 200),
    Endpoint(
        "tenant-create",
        "POST",
        "/api/v1/tenants/",
        STAFF_ONLY,
        201,
        lambda w, c: ({}, {"slug": factories.unique("new-tenant-"), "name": "New"}),
    ),
    Endpoint("tenant-detail", "GET", "/api/v1/tenants/{slug}/", "tenant:read", 200),
    Endpoint("tenant-suspend", "POST", "/api/v1/tenants/{slug}/suspend/", STAFF_ONLY, 200),
    Endpoint(
        "tenant-reactivate",
        "POST",
        "/api/v1/tenants/{slug}/reactivate/",
        STAFF_ONLY,
        200,
        lambda w, c: _suspended(w),
        suspends=True,
    ),
    Endpoint("tenant-close", "POST", "/api/v1/tenants/{slug}/close/", STAFF_ONLY, 200),
    Endpoint("member-list", "GET", "/api/v1/tenants/{slug}/members/", "members:read", 200),
    Endpoint("member-detail", "GET", "/api/v1/tenants/{slug}/members/{member_id}/", "members:read", 200, _member),
    Endpoint(
        "member-role", "PATCH", "/api/v1/tenants/{slug}/members/{member_id}/", "members:write", 200, _member_patch
    ),
    Endpoint("member-remove", "DELETE", "/api/v1/tenants/{slug}/members/{member_id}/", "members:write", 204, _member),
    Endpoint("invitation-list", "GET", "/api/v1/tenants/{slug}/invitations/", "members:read", 200),
    Endpoint(
        "invitation-create", "POST", "/api/v1/tenants/{slug}/invitations/", "members:write", 201, _invitation_create
    ),
    Endpoint(
        "invitation-revoke",
        "POST",
        "/api/v1/tenants/{slug}/invitations/{invitation_id}/revoke/",
        "members:write",
        200,
        _invitation,
    ),
    Endpoint("key-list", "GET", "/api/v1/tenants/{slug}/keys/", "keys:read", 200),
    Endpoint(
        "key-create",
        "POST",
        "/api/v1/tenants/{slug}/keys/",
        "keys:write",
        201,
        lambda w, c: ({}, {"name": "new", "kind": "admin", "scopes": ["keys:write"]}),
    ),
    Endpoint(
        "key-detail", "GET", "/api/v1/tenants/{slug}/keys/{key_id}/", "keys:read", 200, lambda w, c: (_key(w, c), None)
    ),
    Endpoint(
        "key-update",
        "PATCH",
        "/api/v1/tenants/{slug}/keys/{key_id}/",
        "keys:write",
        200,
        lambda w, c: (_key(w, c), {"name": "renamed"}),
    ),
    Endpoint(
        "key-revoke",
        "POST",
        "/api/v1/tenants/{slug}/keys/{key_id}/revoke/",
        "keys:write",
        200,
        lambda w, c: (_key(w, c), None),
    ),
    Endpoint(
        "key-rotate",
        "POST",
        "/api/v1/tenants/{slug}/keys/{key_id}/rotate/",
        "keys:write",
        201,
        lambda w, c: (_key(w, c), {"grace_seconds": 60}),
    ),
    Endpoint("limits-get", "GET", "/api/v1/tenants/{slug}/limits/", "limits:read", 200),
    Endpoint(
        "limits-put",
        "PUT",
        "/api/v1/tenants/{slug}/limits/",
        "limits:write",
        200,
        lambda w, c: (
            {},
            {
                "requests_per_minute": 60,
                "tokens_per_minute": 10_000,
                "max_concurrent_requests": 4,
                "monthly_token_budget": 1_000_000,
                "monthly_spend_cap": "100.00",
                "scheduling_weight": 2,
                "max_prompt_tokens": None,
                "max_output_tokens": None,
                "max_messages": None,
            },
        ),
    ),
    Endpoint(
        "limits-patch",
        "PATCH",
        "/api/v1/tenants/{slug}/limits/",
        "limits:write",
        200,
        lambda w, c: ({}, {"requests_per_minute": 10}),
    ),
    Endpoint("audit-list", "GET", "/api/v1/tenants/{slug}/audit-events/", "audit:read", 200),
]

# Routes that need no credentials (the token in the body is the credential); tested elsewhere.
PUBLIC_ROUTES = {"api/v1/invitations/accept/"}


# --- callers ---------------------------------------------------------------------------------
CALLERS: list[str] = [
    *(f"role:{r.value}" for r in Role),
    "other-tenant-owner",
    "staff",
    "anonymous",
    "key-with-scope",
    "key-without-scope",
    "other-tenant-key",
]


STATUSES = [TenantStatus.ACTIVE, TenantStatus.SUSPENDED]
# Staff pass the door of a suspended tenant; these services still refuse there (409).
STAFF_WHILE_SUSPENDED = {"key-create": 409, "key-rotate": 409, "invitation-create": 409}


def _expected(endpoint: Endpoint, caller: str, status: str = TenantStatus.ACTIVE) -> int:
    """The status the permission table implies for this caller, in a tenant of this status."""
    suspended = status == TenantStatus.SUSPENDED
    if caller == "anonymous":
        return 401
    if (endpoint.suspends or suspended) and caller in ("key-with-scope", "key-without-scope"):
        return 401  # a suspended tenant's admin keys stop authenticating
    if suspended and caller == "staff" and endpoint.name in STAFF_WHILE_SUSPENDED:
        return STAFF_WHILE_SUSPENDED[endpoint.name]
    if suspended and endpoint.method != "GET" and endpoint.scope != STAFF_ONLY and caller.startswith("role:"):
        return 403  # read-only, whatever the role
    if endpoint.scope == ANY_AUTHENTICATED:
        return endpoint.success
    if endpoint.scope == STAFF_ONLY:
        return endpoint.success if caller == "staff" else 403
    if caller == "staff":
        return endpoint.success
    if caller in ("other-tenant-owner", "other-tenant-key"):
        return 404  # exactly like a tenant that does not exist
    if caller == "key-with-scope":
        return endpoint.success
    if caller == "key-without-scope":
        return 403
    role = Role(caller.removeprefix("role:"))
    return endpoint.success if role_has_scope(role, endpoint.scope) else 403


def _scope_or_fallback(endpoint: Endpoint) -> str:
    return endpoint.scope if endpoint.scope in ALL_SCOPES else "tenant:read"


def _client_for(world: World, caller: str, endpoint: Endpoint) -> tuple[APIClient, User | None]:
    client = APIClient()
    if caller.startswith("role:"):
        user = world.users[Role(caller.removeprefix("role:"))]
        client.force_login(user)
        return client, user
    if caller == "other-tenant-owner":
        client.force_login(world.other_users[Role.OWNER])
        return client, world.other_users[Role.OWNER]
    if caller == "staff":
        client.force_login(world.staff)
        return client, world.staff
    if caller == "anonymous":
        return client, None
    scope = _scope_or_fallback(endpoint)
    if caller == "key-with-scope":
        _, raw = factories.admin_key(world.tenant, None, [scope])
    elif caller == "key-without-scope":
        others = sorted(set(ALL_SCOPES) - {scope, "inference"})
        _, raw = factories.admin_key(world.tenant, None, others)
    else:
        _, raw = factories.admin_key(world.other, None, [scope])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client, None


@pytest.fixture
def world() -> World:
    tenant, users = factories.tenant_with_members("matrix")
    other, other_users = factories.tenant_with_members("matrix-other", roles=[Role.OWNER])
    return World(tenant, users, other, other_users, factories.staff_user())


# The suspended column: the callers whose answer depends on the tenant's status (another
# tenant's callers and anonymous ones answer the same either way; the active column has them).
SUSPENDED_CALLERS = [*(f"role:{r.value}" for r in Role), "staff", "key-with-scope"]
CASES = [(caller, TenantStatus.ACTIVE) for caller in CALLERS] + [
    (caller, TenantStatus.SUSPENDED) for caller in SUSPENDED_CALLERS
]


@pytest.mark.parametrize(("caller", "status"), CASES, ids=[f"{c}-{s}" for c, s in CASES])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_matrix(world: World, endpoint: Endpoint, caller: str, status: str) -> None:
    if status == TenantStatus.SUSPENDED and endpoint.suspends:
        pytest.skip("the endpoint's own setup suspends the tenant (the active column covers it)")
    client, user = _client_for(world, caller, endpoint)
    ids, body = endpoint.setup(world, user)
    if status == TenantStatus.SUSPENDED:
        services.tenant_suspend(tenant=world.tenant, actor=factories.SYSTEM)
    url = endpoint.path.format(slug=world.tenant.slug, **ids)
    response = client.generic(
        endpoint.method, url, data=b"" if body is None else json.dumps(body), content_type="application/json"
    )
    expected = _expected(endpoint, caller, status)
    assert response.status_code == expected, (endpoint.name, caller, status, response.content[:300])
    if expected >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]
        tenant_scoped = endpoint.scope in ALL_SCOPES and caller.startswith("role:")
        if status == TenantStatus.SUSPENDED and endpoint.method != "GET" and tenant_scoped:
            assert error["code"] == "tenant_suspended", (endpoint.name, caller, error)


def test_every_route_is_in_the_matrix() -> None:
    """A new management route must be added to ENDPOINTS (or PUBLIC_ROUTES) above."""

    def walk(patterns: list[URLPattern | URLResolver], prefix: str = "", inside: bool = False) -> list[str]:
        found: list[str] = []
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                ours = inside or "tenants.api.urls" in str(pattern.urlconf_name)
                found.extend(walk(pattern.url_patterns, prefix + str(pattern.pattern), ours))
            elif inside:
                found.append(prefix + str(pattern.pattern))
        return found

    routes = set(walk(get_resolver().url_patterns))
    assert routes, "the tenants API routes were not found"
    covered = set()
    for endpoint in ENDPOINTS:
        sample = endpoint.path.format(slug="x", member_id=1, invitation_id=1, key_id=1)
        covered.add(resolve(sample).route)
        view = resolve(sample).func.view_class  # type: ignore[attr-defined]
        if endpoint.scope in ALL_SCOPES:
            # The matrix's scope is the one the view declares.
            assert view.required_scopes[endpoint.method] == endpoint.scope, endpoint.name
    assert routes - covered == PUBLIC_ROUTES


def test_other_tenants_objects_look_missing(world: World) -> None:
    """An id of another tenant's member, invitation or key answers exactly like a missing id."""
    other_membership = Membership.objects.filter(tenant=world.other).first()
    assert other_membership is not None
    other_invitation, _ = services.invitation_create(
        tenant=world.other, email="x@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    other_key, _ = factories.inference_key(world.other, world.other_users[Role.OWNER])
    client = APIClient()
    client.force_login(world.users[Role.OWNER])
    base = f"/api/v1/tenants/{world.tenant.slug}"
    cases = [
        ("GET", f"{base}/members/{{}}/", other_membership.pk),
        ("PATCH", f"{base}/members/{{}}/", other_membership.pk),
        ("DELETE", f"{base}/members/{{}}/", other_membership.pk),
        ("POST", f"{base}/invitations/{{}}/revoke/", other_invitation.pk),
        ("GET", f"{base}/keys/{{}}/", other_key.pk),
        ("PATCH", f"{base}/keys/{{}}/", other_key.pk),
        ("POST", f"{base}/keys/{{}}/revoke/", other_key.pk),
        ("POST", f"{base}/keys/{{}}/rotate/", other_key.pk),
    ]
    for method, template, foreign_id in cases:
        body = {"role": "viewer"} if "members" in template and method == "PATCH" else {}
        foreign = client.generic(
            method, template.format(foreign_id), data=json.dumps(body), content_type="application/json"
        )
        missing = client.generic(
            method, template.format(999_999_999), data=json.dumps(body), content_type="application/json"
        )
        assert foreign.status_code == missing.status_code == 404, (method, template)
        assert foreign.json() == missing.json()
    # And nothing of the other tenant changed.
    other_key.refresh_from_db()
    assert other_key.revoked_at is None
    assert Invitation.objects.get(pk=other_invitation.pk).status == "pending"
    assert Membership.objects.filter(pk=other_membership.pk).exists()
    # A tenant the caller is not in answers like a tenant that does not exist.
    not_mine = client.get(f"/api/v1/tenants/{world.other.slug}/keys/")
    nowhere = client.get("/api/v1/tenants/no-such-tenant/keys/")
    assert not_mine.status_code == nowhere.status_code == 404
    assert not_mine.json() == nowhere.json()
