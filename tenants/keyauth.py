"""Key authentication, the gateway's hot path: raw key → `KeyContext`, cached per process.

`tenants.keycache.KeyCache` is the cache itself (entries and the global version, no Django);
this module owns the process's one cache, what may be cached for a key (`_context_from_key`),
the refusal reasons, and the once-a-minute `last_used_at` write. Writes that can make a cached
key wrong call `key_cache_invalidate()`.
"""

from __future__ import annotations

import threading
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenants.keycache import KeyCache
from tenants.models import APIKey, TenantLimits, TenantStatus
from tenants.selectors import limits_from_rows, token_digest
from tenants.types import KeyContext

INFERENCE_PREFIX = "sk-"
ADMIN_PREFIX = "sk-admin-"
LAST_USED_WRITE_INTERVAL = 60.0  # seconds between `last_used_at` writes per key

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
    digest = token_digest(raw)
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
    hit, context, reason = key_cache().lookup(token_digest(raw))
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
