"""Writes of tenant data: tenants, users, memberships, invitations, API keys, limits, audit.

Every mutation takes an `Actor` and writes an audit event. `acting_role` is the role the caller
acts with in the tenant (a session user's role, or an admin key's creator's role); None means
platform staff or the system, which are bound only by the invariants (the last owner stays).
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, models, transaction
from django.http import Http404
from django.utils import timezone

from core.audit import Actor
from core.errors import Conflict, PermissionRefused, ValidationFailed
from tenants.audit import audit_record
from tenants.keycache import KeyCache
from tenants.models import (
    SLUG_VALIDATOR,
    APIKey,
    Invitation,
    InvitationStatus,
    KeyKind,
    Membership,
    Tenant,
    TenantLimits,
    TenantStatus,
    User,
)
from tenants.permissions import ALL_SCOPES, KEY_MANAGER_ROLES, Role, scopes_for_role
from tenants.selectors import LIMIT_FIELDS, TENANT_ONLY_LIMIT_FIELDS, limits_from_rows, token_digest
from tenants.types import KeyContext

logger = logging.getLogger(__name__)

INFERENCE_PREFIX = "sk-"
ADMIN_PREFIX = "sk-admin-"
# Letters and digits only, so an inference key can never look like it starts with "admin-".
_KEY_ALPHABET = string.ascii_letters + string.digits
_KEY_RANDOM_CHARS = 40  # ~238 bits
# Scopes an inference key may carry; admin keys carry management scopes.
INFERENCE_KEY_SCOPES: frozenset[str] = frozenset({"inference", "models:read"})
DEFAULT_INVITATION_TTL = timedelta(days=7)
MAX_ROTATION_GRACE = timedelta(days=7)
LAST_USED_WRITE_INTERVAL = 60.0  # seconds between `last_used_at` writes per key
_MAX_INT = 2_147_483_647  # PositiveIntegerField
_MAX_BIGINT = 9_223_372_036_854_775_807  # PositiveBigIntegerField


# One digest for writes and reads (tenants.selectors looks invitations up by it).
_digest = token_digest


def _raise_from_django(exc: DjangoValidationError) -> None:
    """Turns a model validation error into ValidationFailed naming the first bad field."""
    if hasattr(exc, "error_dict"):
        field, errors = next(iter(exc.error_dict.items()))
        message = "; ".join(str(m) for e in errors for m in e.messages)
        raise ValidationFailed(message, param=None if field == "__all__" else field) from exc
    raise ValidationFailed("; ".join(exc.messages)) from exc


def _full_clean(instance: models.Model, *, exclude: Iterable[str] = ()) -> None:
    try:
        instance.full_clean(exclude=list(exclude), validate_unique=False, validate_constraints=False)
    except DjangoValidationError as exc:
        _raise_from_django(exc)


# --- tenants ---------------------------------------------------------------------------------
def _validate_slug(slug: str) -> None:
    try:
        SLUG_VALIDATOR(slug)
    except DjangoValidationError as exc:
        raise ValidationFailed(
            "Invalid slug: use 1-50 lowercase letters, digits and inner hyphens.", param="slug", code="invalid_slug"
        ) from exc


def _validate_email(email: str, param: str = "email") -> str:
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except DjangoValidationError as exc:
        raise ValidationFailed(f"Invalid email address: {email!r}.", param=param, code="invalid_email") from exc
    return email


@transaction.atomic
def tenant_create(*, slug: str, name: str, actor: Actor, billing_email: str = "") -> Tenant:
    _validate_slug(slug)
    if not name or not name.strip():
        raise ValidationFailed("A tenant needs a name.", param="name")
    if billing_email:
        billing_email = _validate_email(billing_email, "billing_email")
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"The slug {slug!r} is taken.", param="slug", code="slug_taken")
    tenant = Tenant(slug=slug, name=name.strip(), billing_email=billing_email)
    _full_clean(tenant)
    try:
        with transaction.atomic():
            tenant.save()
    except IntegrityError as exc:  # a concurrent create won the race
        raise Conflict(f"The slug {slug!r} is taken.", param="slug", code="slug_taken") from exc
    TenantLimits.objects.create(tenant=tenant)
    audit_record(
        actor=actor,
        tenant=tenant,
        action="tenant.create",
        target_type="tenant",
        target_id=tenant.pk,
        after={"slug": slug, "name": tenant.name, "status": tenant.status},
    )
    return tenant


@transaction.atomic
def tenant_onboard(
    *,
    slug: str,
    name: str,
    actor: Actor,
    billing_email: str = "",
    owner_email: str | None = None,
    invited_by: User | None = None,
) -> tuple[Tenant, Invitation | None]:
    """A new tenant and, when an owner email is given, that owner's invitation (all or nothing)."""
    tenant = tenant_create(slug=slug, name=name, billing_email=billing_email, actor=actor)
    if not owner_email:
        return tenant, None
    invitation, _token = invitation_create(
        tenant=tenant, email=owner_email, role=Role.OWNER, actor=actor, invited_by=invited_by
    )
    return tenant, invitation


def _tenant_set_status(*, tenant: Tenant, status: str, allowed_from: set[str], actor: Actor, action: str) -> Tenant:
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.status == status:
            return tenant  # idempotent: nothing changes, nothing to audit
        if tenant.status not in allowed_from:
            raise Conflict(f"A {tenant.status} tenant cannot be {status}.", code="invalid_status_transition")
        before = tenant.status
        tenant.status = status
        tenant.status_changed_at = timezone.now()
        tenant.save(update_fields=["status", "status_changed_at"])
        audit_record(
            actor=actor,
            tenant=tenant,
            action=action,
            target_type="tenant",
            target_id=tenant.pk,
            before={"status": before},
            after={"status": status},
        )
        key_cache_invalidate()
    return tenant


def tenant_suspend(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Its keys stop working at once (within a second everywhere); its data stays."""
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.SUSPENDED,
        allowed_from={TenantStatus.ACTIVE},
        actor=actor,
        action="tenant.suspend",
    )


def tenant_reactivate(*, tenant: Tenant, actor: Actor) -> Tenant:
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.ACTIVE,
        allowed_from={TenantStatus.SUSPENDED},
        actor=actor,
        action="tenant.reactivate",
    )


def tenant_close(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Final: keys stop working and members lose access; rows stay for billing and audit."""
    return _tenant_set_status(
        tenant=tenant,
        status=TenantStatus.CLOSED,
        allowed_from={TenantStatus.ACTIVE, TenantStatus.SUSPENDED},
        actor=actor,
        action="tenant.close",
    )


# --- users and memberships -------------------------------------------------------------------
def user_create(
    *,
    email: str,
    password: str | None = None,
    full_name: str = "",
    is_staff: bool = False,
    check_password: bool = False,
) -> User:
    """A user; with no password the account cannot sign in until one is set."""
    email = _validate_email(email)
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(f"A user with email {email!r} exists.", param="email", code="email_taken")
    if password is not None and check_password:
        try:
            validate_password(password, User(email=email, full_name=full_name))
        except DjangoValidationError as exc:
            raise ValidationFailed(" ".join(exc.messages), param="password", code="weak_password") from exc
    try:
        with transaction.atomic():
            return User.objects.create_user(
                email, password, full_name=full_name, is_staff=is_staff, is_superuser=is_staff
            )
    except IntegrityError as exc:
        raise Conflict(f"A user with email {email!r} exists.", param="email", code="email_taken") from exc


def _ensure_role(role: str, param: str = "role") -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise ValidationFailed(
            f"Unknown role {role!r}; one of: {', '.join(r.value for r in Role)}.", param=param, code="invalid_role"
        ) from exc


def _ensure_may_manage_role(acting_role: Role | None, role: Role) -> None:
    """Only owners (and staff) grant, change or take away the owner role."""
    if role == Role.OWNER and acting_role is not None and acting_role != Role.OWNER:
        raise PermissionRefused("Only owners manage owners.", code="owner_required")


def _owner_count(tenant: Tenant) -> int:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


@transaction.atomic
def membership_create(
    *, tenant: Tenant, user: User, role: str, actor: Actor, acting_role: Role | None = None
) -> Membership:
    role_value = _ensure_role(role)
    _ensure_may_manage_role(acting_role, role_value)
    if Membership.objects.filter(tenant=tenant, user=user).exists():
        raise Conflict(f"{user.email} is already a member.", code="already_member")
    membership = Membership.objects.create(tenant=tenant, user=user, role=role_value)
    audit_record(
        actor=actor,
        tenant=tenant,
        action="membership.create",
        target_type="membership",
        target_id=membership.pk,
        after={"user": user.email, "role": role_value},
    )
    return membership


@transaction.atomic
def membership_role_change(
    *, membership: Membership, role: str, actor: Actor, acting_role: Role | None = None
) -> Membership:
    new_role = _ensure_role(role)
    # Lock the tenant's owners so two demotions cannot both pass the last-owner check.
    list(Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id, role=Role.OWNER))
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    old_role = Role(membership.role)
    if old_role == new_role:
        return membership
    _ensure_may_manage_role(acting_role, old_role)
    _ensure_may_manage_role(acting_role, new_role)
    if old_role == Role.OWNER and _owner_count(membership.tenant) <= 1:
        raise Conflict("The last owner cannot be demoted; make another member owner first.", code="last_owner")
    membership.role = new_role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        tenant=membership.tenant,
        action="membership.role_change",
        target_type="membership",
        target_id=membership.pk,
        before={"user": membership.user.email, "role": old_role},
        after={"user": membership.user.email, "role": new_role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor, acting_role: Role | None = None) -> None:
    list(Membership.objects.select_for_update().filter(tenant_id=membership.tenant_id, role=Role.OWNER))
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    role = Role(membership.role)
    _ensure_may_manage_role(acting_role, role)
    if role == Role.OWNER and _owner_count(membership.tenant) <= 1:
        raise Conflict("The last owner cannot be removed.", code="last_owner")
    target_id = membership.pk
    membership.delete()
    audit_record(
        actor=actor,
        tenant=membership.tenant,
        action="membership.remove",
        target_type="membership",
        target_id=target_id,
        before={"user": membership.user.email, "role": role},
    )


# --- invitations -----------------------------------------------------------------------------
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
    email = _validate_email(email)
    role_value = _ensure_role(role)
    _ensure_may_manage_role(acting_role, role_value)
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
        token_digest=_digest(token),
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
        Invitation.objects.select_for_update().select_related("tenant").filter(token_digest=_digest(token)).first()
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
    _ensure_may_manage_role(acting_role, Role(invitation.role))
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


# --- API keys --------------------------------------------------------------------------------
def _new_secret(kind: str) -> str:
    prefix = ADMIN_PREFIX if kind == KeyKind.ADMIN else INFERENCE_PREFIX
    return prefix + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_RANDOM_CHARS))


def grantable_scopes_for(user: User | None, tenant: Tenant) -> frozenset[str]:
    """The scopes a user may put on a key: staff any, members their role's, others none."""
    if user is None:
        return frozenset()
    if user.is_staff:
        return frozenset(ALL_SCOPES)
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    return scopes_for_role(membership.role) if membership is not None else frozenset()


def _key_snapshot(key: APIKey) -> dict[str, Any]:
    """What the audit log keeps about a key; never its secret or digest."""
    snapshot: dict[str, Any] = {
        "name": key.name,
        "kind": key.kind,
        "key": key.masked,
        "scopes": sorted(key.scopes),
        "allowed_models": sorted(key.allowed_models),
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }
    for name in LIMIT_FIELDS:
        snapshot[name] = getattr(key, name)
    return snapshot


def _ensure_may_manage_key(key: APIKey, acting_role: Role | None, acting_user_id: int | None) -> None:
    """Owners, admins and staff manage every key; other roles only keys they created."""
    if acting_role is None or acting_role in KEY_MANAGER_ROLES:
        return
    if acting_user_id is None or key.created_by_id != acting_user_id:
        raise Http404("No such API key.")


def _validate_models(allowed_models: Iterable[str]) -> list[str]:
    names = []
    for name in allowed_models:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationFailed("Model names are non-empty strings.", param="allowed_models")
        names.append(name.strip())
    return sorted(set(names))


def _validate_limit_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in values.items():
        if name not in LIMIT_FIELDS:
            raise ValidationFailed(f"{name!r} is not a per-key limit.", param=name, code="unknown_field")
        if value is None:
            clean[name] = None
            continue
        if name == "monthly_spend_cap":
            try:
                number = Decimal(str(value))
            except ArithmeticError as exc:
                raise ValidationFailed("A spend cap is a decimal amount.", param=name) from exc
            if not number.is_finite() or number < 0 or number.as_tuple().exponent < -6:  # type: ignore[operator]
                raise ValidationFailed("A spend cap is >= 0 with at most 6 decimal places.", param=name)
            clean[name] = number
        else:
            top = _MAX_BIGINT if name == "monthly_token_budget" else _MAX_INT
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValidationFailed(f"{name} is a whole number from 0 to {top}.", param=name)
            clean[name] = value
    return clean


@transaction.atomic
def key_create(
    *,
    tenant: Tenant,
    created_by: User | None,
    name: str,
    actor: Actor,
    scopes: Iterable[str] | None = None,
    kind: str = KeyKind.INFERENCE,
    allowed_models: Iterable[str] = (),
    expires_at: datetime | None = None,
    limits: Mapping[str, Any] | None = None,
    grantable_scopes: frozenset[str] | None = None,
) -> tuple[APIKey, str]:
    """A new key and its plaintext, which is returned here once and stored nowhere.

    `grantable_scopes` bounds the scopes (an admin key creating a key passes its own); by
    default they are the creator's role's scopes, or every scope for staff.
    """
    if kind not in KeyKind.values:
        raise ValidationFailed(f"Unknown key kind {kind!r}; one of: inference, admin.", param="kind")
    if not name or not name.strip() or len(name) > 100:
        raise ValidationFailed("A key needs a name of 1-100 characters.", param="name")
    if not tenant.is_active:
        raise Conflict(f"The tenant is {tenant.status}.", code="tenant_not_active")
    granter = grantable_scopes if grantable_scopes is not None else grantable_scopes_for(created_by, tenant)
    if scopes is None:
        wanted = INFERENCE_KEY_SCOPES & granter if kind == KeyKind.INFERENCE else frozenset(granter - {"inference"})
    else:
        wanted = frozenset(scopes)
    unknown = sorted(wanted - set(ALL_SCOPES))
    if unknown:
        raise ValidationFailed(f"Unknown scopes: {', '.join(unknown)}.", param="scopes", code="invalid_scope")
    if kind == KeyKind.INFERENCE and wanted - INFERENCE_KEY_SCOPES:
        extra = ", ".join(sorted(wanted - INFERENCE_KEY_SCOPES))
        raise ValidationFailed(
            f"Inference keys carry only inference and models:read, not {extra}.", param="scopes", code="invalid_scope"
        )
    if kind == KeyKind.ADMIN and "inference" in wanted:
        raise ValidationFailed("Admin keys do not call /v1; create an inference key.", param="scopes")
    if not wanted:
        raise ValidationFailed("A key needs at least one scope you hold.", param="scopes", code="invalid_scope")
    escalated = sorted(wanted - granter)
    if escalated:
        raise PermissionRefused(
            f"You cannot grant scopes you do not hold: {', '.join(escalated)}.", code="scope_escalation"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("expires_at must be in the future.", param="expires_at")
    raw = _new_secret(kind)
    key = APIKey(
        tenant=tenant,
        kind=kind,
        name=name.strip(),
        prefix=ADMIN_PREFIX if kind == KeyKind.ADMIN else INFERENCE_PREFIX,
        digest=_digest(raw),
        last4=raw[-4:],
        scopes=sorted(wanted),
        allowed_models=_validate_models(allowed_models),
        created_by=created_by,
        expires_at=expires_at,
        **_validate_limit_overrides(limits or {}),
    )
    key.save()
    audit_record(
        actor=actor,
        tenant=tenant,
        action="key.create",
        target_type="api_key",
        target_id=key.pk,
        after=_key_snapshot(key),
    )
    return key, raw


_UNSET: Any = object()


@transaction.atomic
def key_update(
    *,
    key: APIKey,
    actor: Actor,
    acting_role: Role | None = None,
    acting_user_id: int | None = None,
    name: str = _UNSET,
    allowed_models: Iterable[str] = _UNSET,
    expires_at: datetime | None = _UNSET,
    limits: Mapping[str, Any] | None = None,
) -> APIKey:
    """Renames a key or changes its model allow-list, expiry or limit overrides."""
    key = APIKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    _ensure_may_manage_key(key, acting_role, acting_user_id)
    if key.revoked_at is not None and key.revoked_at <= timezone.now():
        raise Conflict("A revoked key cannot be changed.", code="key_revoked")
    before = _key_snapshot(key)
    if name is not _UNSET:
        if not name or not name.strip() or len(name) > 100:
            raise ValidationFailed("A key needs a name of 1-100 characters.", param="name")
        key.name = name.strip()
    if allowed_models is not _UNSET:
        key.allowed_models = _validate_models(allowed_models)
    if expires_at is not _UNSET:
        if expires_at is not None and expires_at <= timezone.now():
            raise ValidationFailed("expires_at must be in the future.", param="expires_at")
        key.expires_at = expires_at
    for field, value in _validate_limit_overrides(limits or {}).items():
        setattr(key, field, value)
    after = _key_snapshot(key)
    if after == before:
        return key
    key.save()
    audit_record(
        actor=actor,
        tenant=key.tenant,
        action="key.update",
        target_type="api_key",
        target_id=key.pk,
        before={k: v for k, v in before.items() if after[k] != v},
        after={k: v for k, v in after.items() if before[k] != v},
    )
    key_cache_invalidate()
    return key


@transaction.atomic
def key_revoke(
    *, key: APIKey, actor: Actor, acting_role: Role | None = None, acting_user_id: int | None = None
) -> APIKey:
    """The key stops working on every process within a second."""
    key = APIKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    _ensure_may_manage_key(key, acting_role, acting_user_id)
    now = timezone.now()
    if key.revoked_at is not None and key.revoked_at <= now:
        return key  # already revoked: idempotent
    before = _key_snapshot(key)
    key.revoked_at = now
    key.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        tenant=key.tenant,
        action="key.revoke",
        target_type="api_key",
        target_id=key.pk,
        before={"revoked_at": before["revoked_at"]},
        after={"revoked_at": now, "key": key.masked},
    )
    key_cache_invalidate()
    return key


@transaction.atomic
def key_rotate(
    *,
    key: APIKey,
    actor: Actor,
    grace: timedelta = timedelta(0),
    acting_role: Role | None = None,
    acting_user_id: int | None = None,
) -> tuple[APIKey, str]:
    """A new key with the same settings and a new secret; the old one works `grace` longer."""
    if grace < timedelta(0) or grace > MAX_ROTATION_GRACE:
        raise ValidationFailed("The grace period is 0 to 604800 seconds.", param="grace_seconds")
    old = APIKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    _ensure_may_manage_key(old, acting_role, acting_user_id)
    now = timezone.now()
    if old.revoked_at is not None:
        raise Conflict("A revoked or already rotated key cannot be rotated.", code="key_revoked")
    if old.expires_at is not None and old.expires_at <= now:
        raise Conflict("An expired key cannot be rotated.", code="key_expired")
    if not old.tenant.is_active:
        raise Conflict(f"The tenant is {old.tenant.status}.", code="tenant_not_active")
    raw = _new_secret(old.kind)
    new = APIKey.objects.create(
        tenant=old.tenant,
        kind=old.kind,
        name=old.name,
        prefix=old.prefix,
        digest=_digest(raw),
        last4=raw[-4:],
        scopes=list(old.scopes),
        allowed_models=list(old.allowed_models),
        created_by=old.created_by,
        expires_at=old.expires_at,
        **{name: getattr(old, name) for name in LIMIT_FIELDS},
    )
    # A future revoked_at is the end of the grace period: the old key works until then.
    old.revoked_at = now + grace
    old.replaced_by = new
    old.save(update_fields=["revoked_at", "replaced_by"])
    audit_record(
        actor=actor,
        tenant=old.tenant,
        action="key.rotate",
        target_type="api_key",
        target_id=old.pk,
        before={"key": old.masked},
        after={"key": new.masked, "new_key_id": new.pk, "old_valid_until": old.revoked_at},
    )
    key_cache_invalidate()
    return new, raw


# --- limits ----------------------------------------------------------------------------------
@transaction.atomic
def limits_update(*, tenant: Tenant, actor: Actor, **fields: Any) -> TenantLimits:
    """Sets tenant limits (staff, or a plan subscription). None clears a limit."""
    allowed = set(LIMIT_FIELDS) | set(TENANT_ONLY_LIMIT_FIELDS)
    for name in fields:
        if name not in allowed:
            raise ValidationFailed(f"{name!r} is not a tenant limit.", param=name, code="unknown_field")
    limits, _ = TenantLimits.objects.select_for_update().get_or_create(tenant=tenant)
    before = {name: getattr(limits, name) for name in fields}
    weight = fields.get("scheduling_weight", limits.scheduling_weight)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= _MAX_INT:
        raise ValidationFailed("scheduling_weight is a whole number >= 1.", param="scheduling_weight")
    clean = _validate_limit_overrides({k: v for k, v in fields.items() if k in LIMIT_FIELDS})
    for name in TENANT_ONLY_LIMIT_FIELDS:
        if name in fields and name != "scheduling_weight":
            value = fields[name]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT
            ):
                raise ValidationFailed(f"{name} is a whole number from 0 to {_MAX_INT}.", param=name)
            clean[name] = value
    if "scheduling_weight" in fields:
        clean["scheduling_weight"] = weight
    for name, value in clean.items():
        setattr(limits, name, value)
    _full_clean(limits, exclude=["tenant"])
    after = {name: getattr(limits, name) for name in fields}
    if after == before:
        return limits
    limits.updated_at = timezone.now()
    limits.save()
    audit_record(
        actor=actor,
        tenant=tenant,
        action="limits.update",
        target_type="tenant_limits",
        target_id=limits.pk,
        before=before,
        after=after,
    )
    key_cache_invalidate()
    return limits


# --- key authentication (the gateway's hot path) --------------------------------------------
_cache_lock = threading.Lock()
_cache: KeyCache | None = None


def key_cache() -> KeyCache:
    """This process's key cache (built on first use from settings.REDIS_URL)."""
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = KeyCache(settings.REDIS_URL)
    return _cache


def key_cache_reset() -> None:
    """Forgets the cache object (tests that change REDIS_URL use this)."""
    global _cache
    with _cache_lock:
        _cache = None
    _last_marked.clear()


def key_cache_invalidate() -> None:
    """Tells every process that some key changed: now, and again once the change is committed
    (a process that read the old row between the two drops it at the second bump)."""
    cache = key_cache()
    cache.bump()
    transaction.on_commit(cache.bump)


# Why key_check found no usable key.
KEY_MALFORMED = "malformed"
KEY_UNKNOWN = "unknown"
KEY_REVOKED = "revoked"
KEY_EXPIRED = "expired"
KEY_TENANT_SUSPENDED = "tenant_suspended"
KEY_TENANT_CLOSED = "tenant_closed"


def _context_from_key(key: APIKey) -> tuple[KeyContext | None, float | None, str]:
    """(context, valid_until, reason): reason says why there is no context, or why it ends."""
    tenant = key.tenant
    now = timezone.now()
    if tenant.status == TenantStatus.SUSPENDED:
        return None, None, KEY_TENANT_SUSPENDED
    if tenant.status != TenantStatus.ACTIVE:
        return None, None, KEY_TENANT_CLOSED
    ends = [(t, why) for t, why in ((key.revoked_at, KEY_REVOKED), (key.expires_at, KEY_EXPIRED)) if t is not None]
    valid_until, why = min(ends, key=lambda end: end[0]) if ends else (None, "")
    if valid_until is not None and valid_until <= now:
        return None, None, why
    try:
        tenant_limits: TenantLimits | None = tenant.limits
    except TenantLimits.DoesNotExist:
        tenant_limits = None
    context = KeyContext(
        key_id=key.pk,
        tenant_id=tenant.pk,
        tenant_slug=tenant.slug,
        kind=key.kind,
        scopes=frozenset(key.scopes),
        allowed_models=frozenset(key.allowed_models),
        created_by_id=key.created_by_id,
        key_limits=limits_from_rows(tenant_limits, key),
        tenant_limits=limits_from_rows(tenant_limits),
        expires_at_ts=valid_until.timestamp() if valid_until is not None else None,
        label=key.masked,
    )
    return context, context.expires_at_ts, why


def _looks_like_key(raw: str) -> bool:
    return isinstance(raw, str) and raw.startswith(INFERENCE_PREFIX) and 20 <= len(raw) <= 200


def key_check(raw: str) -> tuple[KeyContext | None, str]:
    """(context, "") for a usable key, else (None, reason): one of "malformed", "unknown",
    "revoked", "expired", "tenant_suspended", "tenant_closed". Reasons are cached like contexts,
    so telling a suspended tenant (403) from a bad key (401) costs nothing extra.

    Warm: a dict lookup and a clock check, no I/O (the global version is re-read at most
    every 0.25 s). Cold: one query. Sync only (`akey_check` is for async code).
    """
    if not _looks_like_key(raw):
        return None, KEY_MALFORMED
    digest = _digest(raw)
    cache = key_cache()
    hit, context, reason = cache.lookup(digest)
    if hit:
        return context, reason
    version = cache.current_version()
    key = APIKey.objects.select_related("tenant", "tenant__limits").filter(digest=digest).first()
    if key is None:
        cache.put(digest, None, version, None, KEY_UNKNOWN)
        return None, KEY_UNKNOWN
    context, valid_until, reason = _context_from_key(key)
    cache.put(digest, context, version, valid_until, reason)
    return context, ("" if context is not None else reason)


def key_authenticate(raw: str) -> KeyContext | None:
    """The key's context, or None for an unknown, revoked, expired or suspended-tenant key.
    At most one query cold, none warm (see `key_check`)."""
    return key_check(raw)[0]


async def akey_check(raw: str) -> tuple[KeyContext | None, str]:
    """`key_check` for async code: the warm path stays on the event loop."""
    if not _looks_like_key(raw):
        return None, KEY_MALFORMED
    hit, context, reason = key_cache().lookup(_digest(raw))
    if hit:
        return context, reason
    return await sync_to_async(key_check)(raw)


async def akey_authenticate(raw: str) -> KeyContext | None:
    """`key_authenticate` for async code: the warm path stays on the event loop."""
    return (await akey_check(raw))[0]


_last_marked: dict[int, float] = {}


def key_mark_used_due(key_id: int) -> bool:
    """The in-process half of the once-a-minute throttle: a dict lookup, no I/O, so hot async
    paths call it inline and hand only the rare due key to `key_mark_used(..., due_checked=True)`."""
    now = time.monotonic()
    last = _last_marked.get(key_id)
    if last is not None and now - last < LAST_USED_WRITE_INTERVAL:
        return False
    _last_marked[key_id] = now
    return True


def _mark_used_due_everywhere(key_id: int) -> bool:
    """The cross-process half: one process per minute wins the Redis key."""
    if settings.REDIS_URL:
        try:
            client = key_cache()._client()
            return bool(client.set(f"mmorch:key-used:{key_id}", 1, nx=True, ex=int(LAST_USED_WRITE_INTERVAL)))
        except Exception:
            return True
    return True


def key_mark_used(key_id: int, *, due_checked: bool = False) -> None:
    """Records that a key was used; `last_used_at` is written at most once a minute per key."""
    if (due_checked or key_mark_used_due(key_id)) and _mark_used_due_everywhere(key_id):
        APIKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())


async def akey_mark_used(key_id: int) -> None:
    if key_mark_used_due(key_id) and _mark_used_due_everywhere(key_id):
        await APIKey.objects.filter(pk=key_id).aupdate(last_used_at=timezone.now())
