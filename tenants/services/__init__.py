"""Writes of tenant data, one module per entity. Every mutation takes an `Actor` and writes an
audit event. `acting_role` is the role the caller acts with in the tenant (a session user's
role, or an admin key's creator's role); None means platform staff or the system, which are
bound only by the invariants (the last owner stays).

This package re-exports the public services (and, for callers that still reach key
authentication through it, `tenants.keyauth`), so `from tenants import services;
services.key_create(...)` keeps working. New code inside `tenants/` and `gateway/` imports
the entity modules and `tenants.keyauth` directly.
"""

from tenants.keyauth import (
    ADMIN_PREFIX,
    INFERENCE_PREFIX,
    KEY_EXPIRED,
    KEY_MALFORMED,
    KEY_REVOKED,
    KEY_TENANT_CLOSED,
    KEY_TENANT_SUSPENDED,
    KEY_UNKNOWN,
    LAST_USED_WRITE_INTERVAL,
    akey_authenticate,
    akey_check,
    akey_mark_used,
    key_authenticate,
    key_cache,
    key_cache_invalidate,
    key_cache_reset,
    key_check,
    key_mark_used,
    key_mark_used_due,
)
from tenants.keyuse import key_marks_flush, key_marks_push
from tenants.services._validation import UNSET
from tenants.services.invitation import (
    DEFAULT_INVITATION_TTL,
    invitation_accept,
    invitation_create,
    invitation_revoke,
    invitation_url,
)
from tenants.services.key import (
    INFERENCE_KEY_SCOPES,
    MAX_ROTATION_GRACE,
    grantable_scopes_for,
    key_create,
    key_revoke,
    key_rotate,
    key_update,
)
from tenants.services.limits import limits_update
from tenants.services.membership import membership_create, membership_remove, membership_role_change
from tenants.services.tenant import tenant_close, tenant_create, tenant_onboard, tenant_reactivate, tenant_suspend
from tenants.services.user import user_create

__all__ = [
    "ADMIN_PREFIX",
    "DEFAULT_INVITATION_TTL",
    "INFERENCE_KEY_SCOPES",
    "INFERENCE_PREFIX",
    "KEY_EXPIRED",
    "KEY_MALFORMED",
    "KEY_REVOKED",
    "KEY_TENANT_CLOSED",
    "KEY_TENANT_SUSPENDED",
    "KEY_UNKNOWN",
    "LAST_USED_WRITE_INTERVAL",
    "MAX_ROTATION_GRACE",
    "UNSET",
    "akey_authenticate",
    "akey_check",
    "akey_mark_used",
    "grantable_scopes_for",
    "invitation_accept",
    "invitation_create",
    "invitation_revoke",
    "invitation_url",
    "key_authenticate",
    "key_cache",
    "key_cache_invalidate",
    "key_cache_reset",
    "key_check",
    "key_create",
    "key_mark_used",
    "key_mark_used_due",
    "key_marks_flush",
    "key_marks_push",
    "key_revoke",
    "key_rotate",
    "key_update",
    "limits_update",
    "membership_create",
    "membership_remove",
    "membership_role_change",
    "tenant_close",
    "tenant_create",
    "tenant_onboard",
    "tenant_reactivate",
    "tenant_suspend",
    "user_create",
]
