"""Tenant selectors: looking an invitation up by its emailed token."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tenants import services
from tenants.models import Invitation, InvitationStatus
from tenants.permissions import Role
from tenants.selectors import invitation_get_by_token
from tests import factories

pytestmark = pytest.mark.django_db


def _invite(email: str = "invitee@example.com", role: Role = Role.DEVELOPER) -> tuple[Invitation, str]:
    tenant = factories.tenant("inv-sel", name="Invite Selectors Inc")
    return services.invitation_create(tenant=tenant, email=email, role=role, actor=factories.SYSTEM, send=False)


def test_a_pending_invitation_is_found_by_its_token_with_its_tenant(django_assert_num_queries: Any) -> None:
    invitation, token = _invite(role=Role.FINANCE)
    # Only the digest is stored; the look-up hashes the token the same way.
    assert invitation.token_digest == hashlib.sha256(token.encode()).hexdigest()
    assert not Invitation.objects.filter(token_digest=token).exists()
    with django_assert_num_queries(1):
        found = invitation_get_by_token(token)
        assert found is not None
        assert (found.tenant.name, found.role, found.email) == (
            "Invite Selectors Inc",
            "finance",
            "invitee@example.com",
        )
    assert found.pk == invitation.pk


@pytest.mark.parametrize("token", ["", "not-a-real-token", "x" * 500, "\udcff-surrogate"])
def test_an_unknown_token_finds_nothing(token: str) -> None:
    _invite()
    assert invitation_get_by_token(token) is None


def test_an_expired_invitation_is_not_found() -> None:
    invitation, token = _invite()
    invitation.expires_at = timezone.now() - timedelta(seconds=1)
    invitation.save(update_fields=["expires_at"])
    assert invitation_get_by_token(token) is None


def test_an_accepted_or_revoked_invitation_is_not_found() -> None:
    accepted, accepted_token = _invite("a@example.com")
    services.invitation_accept(token=accepted_token, password="a-long-enough-password-1", full_name="A", user=None)
    assert Invitation.objects.get(pk=accepted.pk).status == InvitationStatus.ACCEPTED
    assert invitation_get_by_token(accepted_token) is None

    revoked, revoked_token = services.invitation_create(
        tenant=accepted.tenant, email="r@example.com", role=Role.VIEWER, actor=factories.SYSTEM, send=False
    )
    assert invitation_get_by_token(revoked_token) is not None
    services.invitation_revoke(invitation=revoked, actor=factories.SYSTEM)
    assert invitation_get_by_token(revoked_token) is None
