"""Key authentication, the gateway's hot path: raw key → `KeyContext`, cached per process.

`tenants.keycache.KeyCache` is the cache itself (entries and the global version, no Django);
this module owns the process's one cache, what may be cached for a key (`_context_from_key`),
the refusal reasons, and the once-a-minute `last_used_at` note (tenants/keyuse.py). Writes that can make a cached
key wrong call `key_cache_invalidate()`.
"""

from __future__ import annotations

import threading

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tenants.keycache import KeyCache
from tenants.keyrow import key_row_by_digest
from tenants.keyuse import NOTE_INTERVAL as LAST_USED_WRITE_INTERVAL  # noqa: F401 - re-exported
from tenants.keyuse import key_use_due, key_use_note, key_use_reset
from tenants.models import APIKey, TenantLimits, TenantStatus
from tenants.selectors import limits_from_rows, token_digest
from tenants.types import KeyContext

INFERENCE_PREFIX = "sk-"
ADMIN_PREFIX = "sk-admin-"

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
    key_use_reset()


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
    digest = token_digest(raw)
    cache = key_cache()
    hit, context, reason = cache.lookup(digest)
    if hit:
        return context, reason
    version = cache.current_version()
    key = key_row_by_digest(digest)  # the one query (select_related's, prepared once per process)
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
    hit, context, reason = key_cache().lookup(token_digest(raw))
    if hit:
        return context, reason
    return await sync_to_async(_key_check_pooled, thread_sensitive=False)(raw)


def _key_check_pooled(raw: str) -> tuple[KeyContext | None, str]:
    """`key_check` in a worker thread: its one query, then the connection goes back to the pool
    (or closes, or stays with CONN_MAX_AGE), so no thread keeps a connection between requests."""
    try:
        return key_check(raw)
    finally:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


async def akey_authenticate(raw: str) -> KeyContext | None:
    """`key_authenticate` for async code: the warm path stays on the event loop."""
    return (await akey_check(raw))[0]


def key_mark_used_due(key_id: int) -> bool:
    """The once-a-minute throttle per key and process: a dict lookup, no I/O."""
    return key_use_due(key_id)


def key_mark_used(key_id: int, *, due_checked: bool = False) -> None:
    """Records that a key was used. No database write here: the note reaches `last_used_at`
    through Redis and a beat task (tenants/keyuse.py), at most once a minute per key."""
    key_use_note(key_id, due_checked=due_checked)


async def akey_mark_used(key_id: int) -> None:
    key_use_note(key_id)
