"""Writes of invitations: create (and email), accept with the one-time token, revoke."""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from core.audit import Actor
from core.errors import Conflict, PermissionRefused, ValidationFailed
from tenants.audit import audit_record
from tenants.models import Invitation, InvitationStatus, Membership, Tenant, User
from tenants.permissions import Role
from tenants.selectors import token_digest
from tenants.services._validation import ensure_may_manage_role, ensure_role, validate_email
from tenants.services.user import user_create

logger = logging.getLogger(__name__)

DEFAULT_INVITATION_TTL = timedelta(days=7)


def invitation_url(token: str) -> str:
    return f"{settings.MMORCH_PUBLIC_URL.rstrip('/')}/invitations/{token}/"


@transaction.atomic
def invitation_create(
    *,
    tenant: Tenant,
    email: str,
    role: str,
    actor: Actor,
    acting_role: Role | None = None,
    invited_by: User | None = None,
    ttl: timedelta = DEFAULT_INVITATION_TTL,
    send: bool = True,
) -> tuple[Invitation, str]:
    """An invitation and its one-time token (only its digest is stored; the token is emailed)."""
    email = validate_email(email)
    role_value = ensure_role(role)
    ensure_may_manage_role(acting_role, role_value)
    if not tenant.is_active:
        raise Conflict(f"The tenant is {tenant.status}.", code="tenant_not_active")
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise Conflict(f"{email} is already a member.", param="email", code="already_member")
    now = timezone.now()
    if Invitation.objects.filter(
        tenant=tenant, email__iexact=email, status=InvitationStatus.PENDING, expires_at__gt=now
    ).exists():
        raise Conflict(f"{email} already has a pending invitation.", param="email", code="already_invited")
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role_value,
        token_digest=token_digest(token),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + ttl,
    )
    audit_record(
        actor=actor,
        tenant=tenant,
        action="invitation.create",
        target_type="invitation",
        target_id=invitation.pk,
        after={"email": email, "role": role_value, "expires_at": invitation.expires_at},
    )
    if send:
        # After commit: no email for an invitation that was rolled back.
        transaction.on_commit(lambda: _invitation_email_send(invitation, token))
    return invitation, token


def _invitation_email_send(invitation: Invitation, token: str) -> None:
    tenant = invitation.tenant
    try:
        send_mail(
            subject=f"You are invited to {tenant.name} on mm-orch",
            message=(
                f"You have been invited to join {tenant.name} as {invitation.role}.\n\n"
                f"Accept the invitation: {invitation_url(token)}\n\n"
                f"The link works once and expires at {invitation.expires_at:%Y-%m-%d %H:%M} UTC."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[invitation.email],
        )
    except Exception:  # the invitation stands; it can be revoked and sent again
        logger.exception("could not send the invitation email for invitation %s", invitation.pk)


@transaction.atomic
def invitation_accept(
    *,
    token: str,
    password: str | None = None,
    full_name: str = "",
    user: User | None = None,
    ip: str | None = None,
    request_id: str = "",
) -> Membership:
    """Uses the one-time token: links the invited email's user (creating it if new) to the tenant."""
    invitation = (
        Invitation.objects.select_for_update().select_related("tenant").filter(token_digest=token_digest(token)).first()
    )
    if invitation is None or invitation.status != InvitationStatus.PENDING:
        raise ValidationFailed("This invitation is invalid or was already used.", param="token", code="invalid_token")
    if invitation.expires_at <= timezone.now():
        raise ValidationFailed("This invitation has expired.", param="token", code="expired_token")
    if not invitation.tenant.is_active:
        raise Conflict(f"The tenant is {invitation.tenant.status}.", code="tenant_not_active")
    if user is not None and user.email.lower() != invitation.email.lower():
        raise PermissionRefused("This invitation was sent to another email address.", code="email_mismatch")
    invitee = user or User.objects.filter(email__iexact=invitation.email).first()
    if invitee is None:
        if not password:
            raise ValidationFailed("A password is required to create the account.", param="password")
        invitee = user_create(email=invitation.email, password=password, full_name=full_name, check_password=True)
    actor = Actor(user_id=invitee.pk, label=invitee.email, ip=ip, request_id=request_id)
    if Membership.objects.filter(tenant=invitation.tenant, user=invitee).exists():
        raise Conflict(f"{invitee.email} is already a member.", code="already_member")
    membership = Membership.objects.create(tenant=invitation.tenant, user=invitee, role=invitation.role)
    invitation.status = InvitationStatus.ACCEPTED
    invitation.accepted_at = timezone.now()
    invitation.save(update_fields=["status", "accepted_at"])
    audit_record(
        actor=actor,
        tenant=invitation.tenant,
        action="invitation.accept",
        target_type="invitation",
        target_id=invitation.pk,
        after={"email": invitee.email, "role": invitation.role, "membership": membership.pk},
    )
    return membership


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor, acting_role: Role | None = None) -> Invitation:
    invitation = Invitation.objects.select_for_update().select_related("tenant").get(pk=invitation.pk)
    ensure_may_manage_role(acting_role, Role(invitation.role))
    if invitation.status != InvitationStatus.PENDING:
        raise Conflict(f"The invitation is already {invitation.status}.", code="invitation_not_pending")
    invitation.status = InvitationStatus.REVOKED
    invitation.save(update_fields=["status"])
    audit_record(
        actor=actor,
        tenant=invitation.tenant,
        action="invitation.revoke",
        target_type="invitation",
        target_id=invitation.pk,
        before={"status": InvitationStatus.PENDING},
        after={"status": InvitationStatus.REVOKED, "email": invitation.email},
    )
    return invitation
