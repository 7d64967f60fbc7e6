"""Writes of API keys: create, update, revoke, rotate; and which scopes a creator may grant.

Every change that can make a cached key wrong calls `key_cache_invalidate()`, so it reaches
every gateway process within a second.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from core.audit import Actor
from core.errors import Conflict, NotFound, PermissionRefused, ValidationFailed
from tenants.audit import audit_record
from tenants.keyauth import ADMIN_PREFIX, INFERENCE_PREFIX, key_cache_invalidate
from tenants.models import APIKey, KeyKind, Membership, Tenant, User
from tenants.permissions import ALL_SCOPES, KEY_MANAGER_ROLES, Role, scopes_for_role
from tenants.selectors import LIMIT_FIELDS, token_digest
from tenants.services._validation import UNSET, Unset, validate_limit_overrides, validate_models

# Letters and digits only, so an inference key can never look like it starts with "admin-".
_KEY_ALPHABET = string.ascii_letters + string.digits
_KEY_RANDOM_CHARS = 40  # ~238 bits
# Scopes an inference key may carry; admin keys carry management scopes.
INFERENCE_KEY_SCOPES: frozenset[str] = frozenset({"inference", "models:read"})
MAX_ROTATION_GRACE = timedelta(days=7)


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
        raise NotFound("No such API key.")


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
    if kind == KeyKind.INFERENCE and grantable_scopes is not None and "keys:write" in grantable_scopes:
        # An admin key that manages keys mints inference keys with what its creator may give them
        # (admin keys never hold `inference` themselves, so their own scopes would make a key
        # that cannot call /v1).
        granter = granter | (INFERENCE_KEY_SCOPES & grantable_scopes_for(created_by, tenant))
    if scopes is None:
        wanted = INFERENCE_KEY_SCOPES & granter if kind == KeyKind.INFERENCE else frozenset(granter - {"inference"})
        if kind == KeyKind.INFERENCE and "inference" not in wanted:
            raise PermissionRefused(
                "The key could not call /v1: its creator cannot grant the 'inference' scope. "
                "Ask an owner, admin or developer to create it, or pass scopes explicitly.",
                param="scopes",
                code="scope_missing",
            )
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
        digest=token_digest(raw),
        last4=raw[-4:],
        scopes=sorted(wanted),
        allowed_models=validate_models(allowed_models),
        created_by=created_by,
        expires_at=expires_at,
        **validate_limit_overrides(limits or {}),
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


@transaction.atomic
def key_update(
    *,
    key: APIKey,
    actor: Actor,
    acting_role: Role | None = None,
    acting_user_id: int | None = None,
    name: str | Unset = UNSET,
    allowed_models: Iterable[str] | Unset = UNSET,
    expires_at: datetime | Unset | None = UNSET,
    limits: Mapping[str, Any] | None = None,
) -> APIKey:
    """Renames a key or changes its model allow-list, expiry or limit overrides."""
    key = APIKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
    _ensure_may_manage_key(key, acting_role, acting_user_id)
    if key.revoked_at is not None and key.revoked_at <= timezone.now():
        raise Conflict("A revoked key cannot be changed.", code="key_revoked")
    before = _key_snapshot(key)
    if name is not UNSET:
        if not name or not name.strip() or len(name) > 100:
            raise ValidationFailed("A key needs a name of 1-100 characters.", param="name")
        key.name = name.strip()
    if allowed_models is not UNSET:
        key.allowed_models = validate_models(allowed_models)
    if expires_at is not UNSET and expires_at != key.expires_at:
        # Expiry is final: an expired key stays expired, whatever its new date would be.
        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise Conflict("This key has expired; expiry is final. Create a new key.", code="key_expired")
        if expires_at is not None and expires_at <= timezone.now():
            raise ValidationFailed("expires_at must be in the future.", param="expires_at")
        key.expires_at = expires_at
    for field, value in validate_limit_overrides(limits or {}).items():
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
        digest=token_digest(raw),
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
