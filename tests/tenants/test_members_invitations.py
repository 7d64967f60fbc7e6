"""Owner rules and invitations (email, expiry, one-time use)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone
from rest_framework.test import APIClient

from core.errors import Conflict, PermissionRefused
from tenants import services
from tenants.models import Invitation, Membership, Tenant, User
from tenants.permissions import Role
from tests import factories

pytestmark = pytest.mark.django_db


def _client(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _membership(tenant: Tenant, user: User) -> Membership:
    return Membership.objects.get(tenant=tenant, user=user)


# --- owner rules -----------------------------------------------------------------------------
def test_only_owners_manage_owners() -> None:
    tenant, users = factories.tenant_with_members("own")
    owner_row = _membership(tenant, users[Role.OWNER])
    dev_row = _membership(tenant, users[Role.DEVELOPER])
    admin = _client(users[Role.ADMIN])
    base = "/api/v1/tenants/own/members"

    promote = admin.patch(f"{base}/{dev_row.pk}/", {"role": "owner"}, format="json")
    assert promote.status_code == 403 and promote.json()["error"]["code"] == "owner_required"
    demote = admin.patch(f"{base}/{owner_row.pk}/", {"role": "viewer"}, format="json")
    assert demote.status_code == 403
    remove = admin.delete(f"{base}/{owner_row.pk}/")
    assert remove.status_code == 403
    invite = admin.post(
        "/api/v1/tenants/own/invitations/", {"email": "boss@example.com", "role": "owner"}, format="json"
    )
    assert invite.status_code == 403
    assert Membership.objects.filter(tenant=tenant, role=Role.OWNER).count() == 1
    assert not Invitation.objects.filter(email="boss@example.com").exists()
    # Admins manage the other roles.
    assert admin.patch(f"{base}/{dev_row.pk}/", {"role": "finance"}, format="json").json()["role"] == "finance"

    owner = _client(users[Role.OWNER])
    assert owner.patch(f"{base}/{dev_row.pk}/", {"role": "owner"}, format="json").status_code == 200
    assert Membership.objects.filter(tenant=tenant, role=Role.OWNER).count() == 2
    # With two owners, one may demote the other.
    assert owner.patch(f"{base}/{dev_row.pk}/", {"role": "developer"}, format="json").status_code == 200


def test_the_last_owner_stays() -> None:
    tenant, users = factories.tenant_with_members("last")
    owner_row = _membership(tenant, users[Role.OWNER])
    for client in (_client(users[Role.OWNER]), _client(factories.staff_user())):
        demote = client.patch(f"/api/v1/tenants/last/members/{owner_row.pk}/", {"role": "admin"}, format="json")
        assert demote.status_code == 409 and demote.json()["error"]["code"] == "last_owner"
        remove = client.delete(f"/api/v1/tenants/last/members/{owner_row.pk}/")
        assert remove.status_code == 409 and remove.json()["error"]["code"] == "last_owner"
    owner_row.refresh_from_db()
    assert owner_row.role == Role.OWNER
    with pytest.raises(Conflict):
        services.membership_remove(membership=owner_row, actor=factories.SYSTEM)
    # Once there is a second owner, the first may go.
    second = factories.member(tenant, Role.OWNER)
    services.membership_remove(membership=owner_row, actor=factories.SYSTEM, acting_role=Role.OWNER)
    assert list(Membership.objects.filter(tenant=tenant, role=Role.OWNER).values_list("user", flat=True)) == [second.pk]


def test_membership_services_validate() -> None:
    tenant, users = factories.tenant_with_members("msv")
    with pytest.raises(Conflict, match="already a member"):
        services.membership_create(tenant=tenant, user=users[Role.VIEWER], role="viewer", actor=factories.SYSTEM)
    with pytest.raises(PermissionRefused):
        services.membership_create(
            tenant=tenant, user=factories.user(), role="owner", actor=factories.SYSTEM, acting_role=Role.ADMIN
        )


# --- invitations -----------------------------------------------------------------------------
def _token_from_mail() -> str:
    assert len(mail.outbox) == 1
    found = re.search(r"/invitations/([A-Za-z0-9_-]+)/", mail.outbox[0].body)
    assert found, mail.outbox[0].body
    return found.group(1)


def test_invitation_flow_for_a_new_user(django_capture_on_commit_callbacks: Any) -> None:
    tenant, users = factories.tenant_with_members("inv")
    admin = _client(users[Role.ADMIN])
    with django_capture_on_commit_callbacks(execute=True):
        created = admin.post(
            "/api/v1/tenants/inv/invitations/", {"email": "New.Person@Example.com", "role": "developer"}, format="json"
        )
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == "new.person@example.com" and body["status"] == "pending" and "token" not in body
    assert mail.outbox[0].to == ["new.person@example.com"]
    token = _token_from_mail()
    assert token not in str(list(Invitation.objects.values()))  # only the digest is stored

    anonymous = APIClient()
    no_password = anonymous.post("/api/v1/invitations/accept/", {"token": token}, format="json")
    assert no_password.status_code == 400 and no_password.json()["error"]["param"] == "password"
    weak = anonymous.post("/api/v1/invitations/accept/", {"token": token, "password": "123"}, format="json")
    assert weak.status_code == 400 and weak.json()["error"]["param"] == "password"
    assert not User.objects.filter(email="new.person@example.com").exists()

    accepted = anonymous.post(
        "/api/v1/invitations/accept/",
        {"token": token, "password": "a-long-unusual-passphrase", "full_name": "New Person"},
        format="json",
    )
    assert accepted.status_code == 201, accepted.content
    assert accepted.json() == {"tenant": "inv", "email": "new.person@example.com", "role": "developer"}
    user = User.objects.get(email="new.person@example.com")
    assert user.check_password("a-long-unusual-passphrase") and user.full_name == "New Person"
    assert _membership(tenant, user).role == Role.DEVELOPER

    again = anonymous.post(
        "/api/v1/invitations/accept/", {"token": token, "password": "a-long-unusual-passphrase"}, format="json"
    )
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_token"
    assert Membership.objects.filter(tenant=tenant, user=user).count() == 1


def test_invitation_links_an_existing_user() -> None:
    tenant, _ = factories.tenant_with_members("link")
    existing = factories.user("known@example.com")
    _, token = services.invitation_create(
        tenant=tenant, email="known@example.com", role="finance", actor=factories.SYSTEM, send=False
    )
    # Signed in as someone else: refused.
    stranger = _client(factories.user("stranger@example.com"))
    refused = stranger.post("/api/v1/invitations/accept/", {"token": token}, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_mismatch"
    accepted = _client(existing).post("/api/v1/invitations/accept/", {"token": token}, format="json")
    assert accepted.status_code == 201
    assert _membership(tenant, existing).role == Role.FINANCE


def test_expired_and_revoked_invitations_are_refused() -> None:
    tenant, users = factories.tenant_with_members("exp")
    invitation, token = services.invitation_create(
        tenant=tenant, email="late@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    late = APIClient().post(
        "/api/v1/invitations/accept/", {"token": token, "password": "x-long-passphrase-1"}, format="json"
    )
    assert late.status_code == 400 and late.json()["error"]["code"] == "expired_token"
    # An expired invitation does not block a new one.
    fresh, fresh_token = services.invitation_create(
        tenant=tenant, email="late@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    revoke = _client(users[Role.ADMIN]).post(f"/api/v1/tenants/exp/invitations/{fresh.pk}/revoke/")
    assert revoke.status_code == 200 and revoke.json()["status"] == "revoked"
    used = APIClient().post(
        "/api/v1/invitations/accept/", {"token": fresh_token, "password": "x-long-passphrase-1"}, format="json"
    )
    assert used.status_code == 400 and used.json()["error"]["code"] == "invalid_token"
    again = _client(users[Role.ADMIN]).post(f"/api/v1/tenants/exp/invitations/{fresh.pk}/revoke/")
    assert again.status_code == 409
    assert not User.objects.filter(email="late@example.com").exists()
    bogus = APIClient().post("/api/v1/invitations/accept/", {"token": "nope"}, format="json")
    assert bogus.status_code == 400 and bogus.json()["error"]["code"] == "invalid_token"


def test_invitation_list_filters_by_status() -> None:
    tenant, users = factories.tenant_with_members("ilist")
    for n in range(3):
        services.invitation_create(
            tenant=tenant, email=f"p{n}@example.com", role="viewer", actor=factories.SYSTEM, send=False
        )
    first = Invitation.objects.filter(tenant=tenant).last()
    assert first is not None
    services.invitation_revoke(invitation=first, actor=factories.SYSTEM)
    client = _client(users[Role.VIEWER])
    assert client.get("/api/v1/tenants/ilist/invitations/").json()["count"] == 3
    pending = client.get("/api/v1/tenants/ilist/invitations/?status=pending").json()
    assert pending["count"] == 2 and all(i["status"] == "pending" for i in pending["results"])
