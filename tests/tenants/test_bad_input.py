"""Bad input on every write endpoint: a precise 400/413 in the one error format, nothing written."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from rest_framework.test import APIClient

from core.api.parsers import LimitedJSONParser
from tenants import services
from tenants.models import Membership, Tenant, User
from tenants.permissions import Role
from tests import factories

pytestmark = pytest.mark.django_db


@dataclass
class Ctx:
    tenant: Tenant
    users: dict[Role, User]
    member_id: int
    invitation_id: int
    key_id: int


@dataclass(frozen=True)
class WriteEndpoint:
    name: str
    method: str
    path: str
    # Bodies that are wrong, each with the field the error must name (None: the whole body).
    wrong: tuple[tuple[dict[str, Any], str | None, str | None], ...]  # (body, param, code)


ENDPOINTS: list[WriteEndpoint] = [
    WriteEndpoint(
        "tenant-create",
        "POST",
        "/api/v1/tenants/",
        (
            ({"slug": 5, "name": "x"}, "slug", "invalid"),
            ({"slug": "Bad Slug!", "name": "x"}, "slug", "invalid_slug"),
            ({"slug": "-leading", "name": "x"}, "slug", "invalid_slug"),
            ({"slug": "ok-slug", "name": "x", "billing_email": "not-an-email"}, "billing_email", "invalid"),
            ({"slug": "ok-slug", "name": "x", "owner_email": "a@"}, "owner_email", "invalid"),
            ({"slug": "ok-slug"}, "name", "required"),
            ({"slug": "bad-in", "name": "x", "plan": "gold"}, "plan", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "tenant-suspend", "POST", "/api/v1/tenants/{slug}/suspend/", (({"now": True}, "now", "unknown_field"),)
    ),
    WriteEndpoint("tenant-close", "POST", "/api/v1/tenants/{slug}/close/", (({"now": True}, "now", "unknown_field"),)),
    WriteEndpoint(
        "member-role",
        "PATCH",
        "/api/v1/tenants/{slug}/members/{member_id}/",
        (
            ({"role": 5}, "role", "invalid_choice"),
            ({"role": "emperor"}, "role", "invalid_choice"),
            ({}, "role", "required"),
            ({"role": "viewer", "email": "x@example.com"}, "email", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "invitation-create",
        "POST",
        "/api/v1/tenants/{slug}/invitations/",
        (
            ({"email": "not-an-email", "role": "viewer"}, "email", "invalid"),
            ({"email": 42, "role": "viewer"}, "email", "invalid"),
            ({"email": "a@example.com", "role": ["viewer"]}, "role", "invalid_choice"),
            ({"email": "a@example.com", "role": "viewer", "ttl": 5}, "ttl", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "invitation-revoke",
        "POST",
        "/api/v1/tenants/{slug}/invitations/{invitation_id}/revoke/",
        (({"reason": "x"}, "reason", "unknown_field"),),
    ),
    WriteEndpoint(
        "invitation-accept",
        "POST",
        "/api/v1/invitations/accept/",
        (
            ({"token": 123}, "token", "invalid"),
            ({}, "token", "required"),
            ({"token": "t", "role": "owner"}, "role", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "key-create",
        "POST",
        "/api/v1/tenants/{slug}/keys/",
        (
            ({"name": 123}, "name", "invalid"),
            ({"name": "k", "scopes": "inference"}, "scopes", "not_a_list"),
            ({"name": "k", "scopes": ["root"]}, "scopes", "invalid_choice"),
            ({"name": "k", "kind": "super"}, "kind", "invalid_choice"),
            ({"name": "k", "expires_at": "yesterday"}, "expires_at", "invalid"),
            ({"name": "k", "requests_per_minute": "10"}, "requests_per_minute", "invalid"),
            ({"name": "k", "requests_per_minute": -1}, "requests_per_minute", "min_value"),
            ({"name": "k", "requests_per_minute": 2**40}, "requests_per_minute", "max_value"),
            ({"name": "k", "monthly_token_budget": 2**63}, "monthly_token_budget", None),
            ({"name": "k", "monthly_spend_cap": "lots"}, "monthly_spend_cap", "invalid"),
            ({"name": "k", "allowed_models": [1]}, "allowed_models", "invalid"),
            ({"name": "k", "owner": 1}, "owner", "unknown_field"),
            ({"name": "k", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at", "invalid"),
        ),
    ),
    WriteEndpoint(
        "key-update",
        "PATCH",
        "/api/v1/tenants/{slug}/keys/{key_id}/",
        (
            ({"name": ""}, "name", "blank"),
            ({"allowed_models": "demo"}, "allowed_models", "not_a_list"),
            ({"tokens_per_minute": 1.5}, "tokens_per_minute", "invalid"),
            ({"scopes": ["keys:write"]}, "scopes", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "key-revoke", "POST", "/api/v1/tenants/{slug}/keys/{key_id}/revoke/", (({"at": 1}, "at", "unknown_field"),)
    ),
    WriteEndpoint(
        "key-rotate",
        "POST",
        "/api/v1/tenants/{slug}/keys/{key_id}/rotate/",
        (
            ({"grace_seconds": "60"}, "grace_seconds", "invalid"),
            ({"grace_seconds": -1}, "grace_seconds", "min_value"),
            ({"grace_seconds": 10**9}, "grace_seconds", "max_value"),
            ({"grace": 60}, "grace", "unknown_field"),
        ),
    ),
    WriteEndpoint(
        "limits-put",
        "PUT",
        "/api/v1/tenants/{slug}/limits/",
        (
            ({"requests_per_minute": 1}, "tokens_per_minute", "required"),
            ({"requests_per_minute": True}, "requests_per_minute", "invalid"),
        ),
    ),
    WriteEndpoint(
        "limits-patch",
        "PATCH",
        "/api/v1/tenants/{slug}/limits/",
        (
            ({"scheduling_weight": 0}, "scheduling_weight", "min_value"),
            ({"monthly_spend_cap": "1.1234567"}, "monthly_spend_cap", "max_decimal_places"),
            ({"monthly_spend_cap": {"amount": 1}}, "monthly_spend_cap", "invalid"),
            ({"rpm": 5}, "rpm", "unknown_field"),
        ),
    ),
]


@pytest.fixture
def ctx() -> Ctx:
    tenant, users = factories.tenant_with_members("bad")
    membership = Membership.objects.get(tenant=tenant, user=users[Role.VIEWER])
    invitation, _ = services.invitation_create(
        tenant=tenant, email="pending@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    key, _ = factories.inference_key(tenant, users[Role.OWNER])
    return Ctx(tenant, users, membership.pk, invitation.pk, key.pk)


def _snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every tenants table (tenants, users, memberships, invitations, keys, limits, audit)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            if table.startswith("tenants_"):
                cursor.execute(f'SELECT * FROM "{table}" ORDER BY 1')  # noqa: S608 - names from the schema
                rows[table] = cursor.fetchall()
    return rows


def _client(ctx: Ctx) -> APIClient:
    client = APIClient()
    client.force_login(factories.staff_user())  # staff hold every scope: only the input can be wrong
    return client


def _url(endpoint: WriteEndpoint, ctx: Ctx) -> str:
    return endpoint.path.format(
        slug=ctx.tenant.slug, member_id=ctx.member_id, invitation_id=ctx.invitation_id, key_id=ctx.key_id
    )


def _assert_error(response: Any, status: int, param: str | None, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:400]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].split(".")[0] == param, error
        assert param in error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_malformed_json_and_non_objects(ctx: Ctx, endpoint: WriteEndpoint) -> None:
    client = _client(ctx)
    before = _snapshot()
    for raw in [b"{", b'{"name": "x",}', b"\xff\xfe", b"[1, 2]", b'"text"', b"null"]:
        response = client.generic(endpoint.method, _url(endpoint, ctx), data=raw, content_type="application/json")
        error = _assert_error(response, 400, None, None)
        if raw in (b"{", b'{"name": "x",}', b"\xff\xfe"):
            assert error["code"] == "parse_error" and error["message"].startswith("Malformed JSON")
    assert _snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_wrong_fields_and_types(ctx: Ctx, endpoint: WriteEndpoint) -> None:
    client = _client(ctx)
    before = _snapshot()
    for body, param, code in endpoint.wrong:
        response = client.generic(
            endpoint.method, _url(endpoint, ctx), data=json.dumps(body), content_type="application/json"
        )
        _assert_error(response, 400, param, code)
    assert _snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_oversized_body_is_413(ctx: Ctx, endpoint: WriteEndpoint, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    client = _client(ctx)
    before = _snapshot()
    body = json.dumps({"name": "x" * 5000}).encode()
    response = client.generic(endpoint.method, _url(endpoint, ctx), data=body, content_type="application/json")
    _assert_error(response, 413, None, "request_too_large")
    assert _snapshot() == before


def test_parser_stops_at_the_limit_without_content_length(settings: Any) -> None:
    """A body with no (or a lying) Content-Length is still cut at the limit."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    with pytest.raises(RequestDataTooBig):
        LimitedJSONParser().parse(io.BytesIO(b'{"a": "' + b"x" * 200 + b'"}'))
    assert LimitedJSONParser().parse(io.BytesIO(b'{"a": 1}')) == {"a": 1}


def test_huge_ids_are_404_not_errors(ctx: Ctx) -> None:
    client = _client(ctx)
    huge = 10**25
    for url in [f"/api/v1/tenants/bad/keys/{huge}/", f"/api/v1/tenants/bad/members/{huge}/"]:
        response = client.get(url)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    too_big = client.get(f"/api/v1/tenants/bad/audit-events/?actor_user_id={huge}")
    _assert_error(too_big, 400, "actor_user_id", "max_value")


def test_wrong_content_type_is_415(ctx: Ctx) -> None:
    client = _client(ctx)
    before = _snapshot()
    response = client.post("/api/v1/tenants/bad/keys/", data="name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert _snapshot() == before


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("created_after=yesterday", "created_after"),
        ("created_after=2026-02-01T00:00:00Z&created_before=2026-01-01T00:00:00Z", "created_before"),
        ("action=DROP TABLE", "action"),
        ("actor_user_id=abc", "actor_user_id"),
        ("page_size=0", "page_size"),
        ("colour=red", "colour"),
    ],
)
def test_bad_audit_filters(ctx: Ctx, query: str, param: str) -> None:
    response = _client(ctx).get(f"/api/v1/tenants/bad/audit-events/?{query}")
    _assert_error(response, 400, param, None)


def test_duplicate_and_conflicting_writes_are_4xx(ctx: Ctx) -> None:
    client = _client(ctx)
    taken = client.post("/api/v1/tenants/", {"slug": "bad", "name": "again"}, format="json")
    assert taken.status_code == 409 and taken.json()["error"]["param"] == "slug"
    member = client.post(
        "/api/v1/tenants/bad/invitations/", {"email": ctx.users[Role.ADMIN].email, "role": "viewer"}, format="json"
    )
    assert member.status_code == 409 and member.json()["error"]["code"] == "already_member"
    twice = client.post(
        "/api/v1/tenants/bad/invitations/", {"email": "pending@example.com", "role": "viewer"}, format="json"
    )
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "already_invited"
