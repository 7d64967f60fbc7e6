"""Sign in and out, the lockout message, password reset by email, invitations, CSRF."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants import services
from tenants.models import Invitation, InvitationStatus, Membership
from tenants.permissions import Role
from tests import factories
from tests.frontend.conftest import PASSWORD, SYSTEM, World, client_for


def test_sign_in_with_email_and_password_lands_on_the_first_tenant(world: World) -> None:
    client = Client()
    page = client.get("/login/")
    assert page.status_code == 200
    assert b'<label for="id_username">Email' in page.content
    response = client.post("/login/", {"username": world.users[Role.ADMIN].email, "password": PASSWORD})
    assert response.status_code == 302
    landing = client.get(response["Location"], follow=True)
    assert landing.redirect_chain[-1][0] == "/t/acme/"
    assert b"Overview" in landing.content


def test_wrong_password_shows_a_clear_error_and_signs_nobody_in(world: World) -> None:
    client = Client()
    response = client.post("/login/", {"username": world.users[Role.ADMIN].email, "password": "nope"})
    assert response.status_code == 200
    assert b"That email and password do not match an account." in response.content
    assert "_auth_user_id" not in client.session


def test_lockout_after_repeated_failures_shows_a_clear_message(world: World, settings: Any) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    from axes.utils import reset

    reset()
    client = Client()
    email = world.users[Role.VIEWER].email
    for _ in range(3):
        client.post("/login/", {"username": email, "password": "wrong"})
    locked = client.post("/login/", {"username": email, "password": PASSWORD})
    assert locked.status_code == 429
    assert b"Too many failed sign-ins" in locked.content
    assert "_auth_user_id" not in client.session
    reset()


def test_sign_out_is_post_only(world: World) -> None:
    client = client_for(world.users[Role.OWNER])
    assert client.get("/logout/").status_code == 405
    assert client.get("/t/acme/").status_code == 200
    response = client.post("/logout/")
    assert response.status_code == 302
    assert client.get("/t/acme/").status_code == 302


def test_csrf_is_enforced_on_dashboard_forms(world: World) -> None:
    client = client_for(world.users[Role.OWNER], enforce_csrf_checks=True)
    key = world.keys[Role.OWNER][0]
    response = client.post(f"/t/acme/keys/{key.pk}/revoke/")
    assert response.status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


def test_password_reset_by_email(world: World) -> None:
    user = world.users[Role.FINANCE]
    client = Client()
    response = client.post("/password-reset/", {"email": user.email})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/password-reset/[^\s]+/)", mail.outbox[0].body)
    assert link is not None
    form_page = client.get(link.group(1), follow=True)
    assert b"Choose a new password" in form_page.content
    new_password = "a-brand-new-secret-9876"
    done = client.post(form_page.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password})
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_password_reset_for_an_unknown_email_sends_nothing(world: World) -> None:
    response = Client().post("/password-reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302
    assert mail.outbox == []


def _invite(world: World, email: str, role: Role = Role.DEVELOPER) -> str:
    _, token = services.invitation_create(tenant=world.acme, email=email, role=role, actor=SYSTEM, send=False)
    return token


def test_accepting_an_invitation_creates_the_account(world: World) -> None:
    token = _invite(world, "newdev@example.com")
    client = Client()
    page = client.get(f"/invitations/{token}/")
    assert page.status_code == 200
    password = "a-long-enough-password-77"
    response = client.post(
        f"/invitations/{token}/", {"full_name": "New Dev", "password1": password, "password2": password}
    )
    assert response.status_code == 302
    user = get_user_model().objects.get(email="newdev@example.com")
    assert user.check_password(password)
    assert Membership.objects.get(tenant=world.acme, user=user).role == Role.DEVELOPER
    assert client.post("/login/", {"username": user.email, "password": password}).status_code == 302


def test_an_existing_user_accepts_while_signed_in(world: World) -> None:
    token = _invite(world, world.outsider.email, Role.VIEWER)
    client = client_for(world.outsider)
    response = client.post(f"/invitations/{token}/", {})
    assert response.status_code == 302
    assert response["Location"] == "/t/acme/"
    assert Membership.objects.get(tenant=world.acme, user=world.outsider).role == Role.VIEWER


def test_invitation_errors_are_shown_and_nothing_is_created(world: World) -> None:
    token = _invite(world, "weak@example.com")
    client = Client()
    mismatch = client.post(f"/invitations/{token}/", {"password1": "a-long-password-1", "password2": "other-one-2"})
    assert mismatch.status_code == 400
    assert b"The two passwords differ." in mismatch.content
    weak = client.post(f"/invitations/{token}/", {"password1": "123", "password2": "123"})
    assert weak.status_code == 400
    assert b"too short" in weak.content
    assert not get_user_model().objects.filter(email="weak@example.com").exists()
    bogus = client.post("/invitations/not-a-real-token/", {"password1": "x-long-pass-1", "password2": "x-long-pass-1"})
    assert bogus.status_code == 400
    assert b"invalid or was already used" in bogus.content
    assert Invitation.objects.get(email="weak@example.com").status == InvitationStatus.PENDING


def test_the_invitation_page_names_the_tenant_and_the_role_before_accepting(world: World) -> None:
    token = _invite(world, "finance-to-be@example.com", Role.FINANCE)
    page = Client().get(f"/invitations/{token}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<strong id="invitation-tenant">Acme</strong>' in html
    assert '<strong id="invitation-role">Finance</strong>' in html
    assert "finance-to-be@example.com" in html and 'id="accept-form"' in html
    # Only looking changes nothing: the invitation is still pending and nobody joined.
    invitation = Invitation.objects.get(email="finance-to-be@example.com")
    assert invitation.status == InvitationStatus.PENDING
    assert not get_user_model().objects.filter(email="finance-to-be@example.com").exists()


def test_a_signed_in_user_is_warned_when_the_invitation_is_for_another_address(world: World) -> None:
    token = _invite(world, "someone-else@example.com", Role.VIEWER)
    html = client_for(world.outsider).get(f"/invitations/{token}/").content.decode()
    assert 'id="invitation-other-email"' in html
    assert f"You are signed in as {world.outsider.email}" in html
    own = _invite(world, world.outsider.email, Role.VIEWER)
    assert 'id="invitation-other-email"' not in client_for(world.outsider).get(f"/invitations/{own}/").content.decode()


def test_a_wrong_expired_or_used_invitation_link_gets_a_clear_page(world: World) -> None:
    expired = _invite(world, "late@example.com")
    Invitation.objects.filter(email="late@example.com").update(expires_at=timezone.now() - timedelta(minutes=1))
    used = _invite(world, world.outsider.email, Role.VIEWER)
    assert client_for(world.outsider).post(f"/invitations/{used}/", {}).status_code == 302
    for token in ("not-a-real-token", expired, used):
        page = Client().get(f"/invitations/{token}/")
        assert page.status_code == 404, token
        html = page.content.decode()
        assert "Invitation not valid" in html
        assert "This invitation link is wrong, has expired or was already used." in html
        assert 'id="accept-form"' not in html and "Acme" not in html
    # Accepting the expired one still fails, and says why.
    late = Client().post(f"/invitations/{expired}/", {"password1": "x-long-pass-12", "password2": "x-long-pass-12"})
    assert late.status_code == 400 and b"This invitation has expired." in late.content
    assert not get_user_model().objects.filter(email="late@example.com").exists()


def test_signed_in_user_with_no_tenant_is_told_why(db: None) -> None:
    loner = factories.user()
    response = client_for(loner).get("/")
    assert response.status_code == 200
    assert b"No tenant yet" in response.content


def test_tenant_switcher_lists_each_tenant_of_the_user(world: World) -> None:
    services.membership_create(tenant=world.globex, user=world.users[Role.ADMIN], role=Role.VIEWER, actor=SYSTEM)
    client = client_for(world.users[Role.ADMIN])
    page = client.get("/t/acme/").content.decode()
    assert 'href="/t/acme/"' in page and 'href="/t/globex/"' in page
    # In globex the same person is a viewer: no keys or audit entries in the menu, and no access.
    globex = client.get("/t/globex/").content.decode()
    assert 'href="/t/globex/keys/"' not in globex
    assert 'href="/t/globex/members/"' in globex
    assert client.get("/t/globex/keys/").status_code == 403


def test_a_closed_tenant_is_gone_for_members_but_not_for_staff(world: World) -> None:
    services.tenant_suspend(tenant=world.acme, actor=SYSTEM)
    owner = client_for(world.users[Role.OWNER])
    suspended = owner.get("/t/acme/")
    assert suspended.status_code == 200 and "This tenant is <strong>suspended</strong>" in suspended.content.decode()
    services.tenant_close(tenant=world.acme, actor=SYSTEM)
    assert owner.get("/t/acme/").status_code == 404
    assert client_for(world.staff).get("/t/acme/").status_code == 200


def test_a_stale_form_gets_a_clear_page(world: World) -> None:
    client = client_for(world.users[Role.OWNER], enforce_csrf_checks=True)
    response = client.post("/t/acme/members/invite/", {"email": "x@example.com", "role": "viewer"})
    assert response.status_code == 403
    assert b"Form expired" in response.content
    assert not Invitation.objects.filter(email="x@example.com").exists()
