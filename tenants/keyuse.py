"""`last_used_at` without a database write on the request path.

A request notes its key's use in process memory (a dict; at most once a minute per key). A daemon
thread per process moves the notes every TENANTS_KEY_MARKS_PUSH_S: with Redis into one hash
(key id → newest use, epoch seconds; the newest wins when processes race), without Redis straight
into the database. The beat task `tenants.tasks.key_marks_flush` moves the hash into the database,
one UPDATE per batch of TENANTS_KEY_MARKS_BATCH keys. Notes still in memory are pushed at exit.

Nothing is lost when a flush dies: the hash is renamed to a "flushing" hash before it is read and
deleted only once every batch is committed; the next flush starts with what a dead one left. The
update keeps the newer time, so writing a batch twice is harmless. A deleted key's mark is dropped.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Case, DateTimeField, F, Q, Value, When

from tenants.models import APIKey

logger = logging.getLogger(__name__)

NOTE_INTERVAL = 60.0  # seconds between two notes of one key in one process
USED_KEY = "mmorch:{keys-used}"  # the braces keep both hashes in one Redis Cluster slot (RENAME)
FLUSHING_KEY = "mmorch:{keys-used}:flushing"
LOCK_KEY = "mmorch:{keys-used}:lock"
LOCK_TTL_S = 300
_PUSH_CHUNK = 1000  # notes per Redis call
# Keeps the newest time per key id: ARGV holds id, time, id, time, ...
_MERGE = """
for i = 1, #ARGV, 2 do
  local seen = redis.call('HGET', KEYS[1], ARGV[i])
  if (not seen) or tonumber(seen) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return #ARGV / 2
"""

_lock = threading.Lock()
_pending: dict[int, float] = {}  # key id → last use (epoch seconds) not yet pushed
_noted: dict[int, float] = {}  # key id → monotonic time of its last note (the throttle)
_pusher_pid: int | None = None


def key_use_due(key_id: int) -> bool:
    """The once-a-minute throttle: a dict lookup, no I/O."""
    now = time.monotonic()
    last = _noted.get(key_id)
    if last is not None and now - last < NOTE_INTERVAL:
        return False
    _noted[key_id] = now
    return True


def key_use_note(key_id: int, *, due_checked: bool = False) -> None:
    """Notes that a key was used now. No I/O: safe on the event loop."""
    if not (due_checked or key_use_due(key_id)):
        return
    _pending[key_id] = time.time()
    if _pusher_pid != os.getpid():
        _pusher_start()


def key_use_pending() -> dict[int, float]:
    """The notes this process has not pushed yet (a copy)."""
    return dict(_pending)


def key_use_reset() -> None:
    """Forgets this process's notes and throttle (tests)."""
    _pending.clear()
    _noted.clear()


def _redis() -> Any:
    from tenants.keyauth import key_cache

    return key_cache()._client()


def _take_pending() -> dict[int, float]:
    with _lock:
        taken = dict(_pending)
        for key_id, at in taken.items():
            if _pending.get(key_id) == at:
                del _pending[key_id]
    return taken


def _put_back(marks: dict[int, float]) -> None:
    with _lock:
        for key_id, at in marks.items():
            if _pending.get(key_id, 0.0) < at:
                _pending[key_id] = at


def key_marks_push() -> int:
    """Moves this process's notes on: into Redis when configured, else into the database.
    On failure they stay pending for the next push. Returns how many were moved."""
    marks = _take_pending()
    if not marks:
        return 0
    try:
        if settings.REDIS_URL:
            client = _redis()
            items = list(marks.items())
            for start in range(0, len(items), _PUSH_CHUNK):
                args = [str(v) for pair in items[start : start + _PUSH_CHUNK] for v in pair]
                client.eval(_MERGE, 1, USED_KEY, *args)
        else:
            key_marks_write(marks)
    except Exception:
        _put_back(marks)
        raise
    return len(marks)


def key_marks_write(marks: dict[int, float]) -> int:
    """Writes marks to the database, one statement per batch; only moves `last_used_at` forward.
    Returns the number of rows updated (a deleted key updates none)."""
    batch = max(1, settings.TENANTS_KEY_MARKS_BATCH)
    items = sorted(marks.items())
    updated = 0
    for start in range(0, len(items), batch):
        updated += _write_batch(items[start : start + batch])
    return updated


def _write_batch(items: list[tuple[int, float]]) -> int:
    ids = [key_id for key_id, _ in items]
    times = [datetime.fromtimestamp(at, tz=UTC) for _, at in items]
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(APIKey._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS k SET last_used_at = v.at "  # noqa: S608 - the table name is ours
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) "
                "WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)",
                [ids, times],
            )
            return int(cursor.rowcount)
    # The embedded database: one UPDATE with a CASE per batch, moving each time forward only.
    newer = [
        When(Q(pk=key_id) & (Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)), then=Value(at))
        for key_id, at in zip(ids, times, strict=True)
    ]
    return APIKey.objects.filter(pk__in=ids).update(
        last_used_at=Case(*newer, default=F("last_used_at"), output_field=DateTimeField())
    )


def _scan(client: Any, name: str) -> Iterable[tuple[int, float]]:
    for raw_id, raw_at in client.hscan_iter(name, count=1000):
        try:
            yield int(raw_id), float(raw_at)
        except ValueError:
            logger.warning("key marks: dropped a malformed entry %r=%r", raw_id, raw_at)


def key_marks_flush() -> int:
    """Moves the marks collected in Redis into the database (the beat task). Without Redis it
    pushes this process's own notes. Returns the number of marks handled."""
    if not settings.REDIS_URL:
        return key_marks_push()
    key_marks_push()  # this process's own notes first (a worker can serve keyed requests too)
    client = _redis()
    token = uuid.uuid4().hex
    if not client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL_S):
        return 0  # another flush runs; it takes these marks
    try:
        if not client.exists(FLUSHING_KEY):
            if not client.exists(USED_KEY):
                return 0
            client.rename(USED_KEY, FLUSHING_KEY)
        marks: dict[int, float] = {}
        for key_id, at in _scan(client, FLUSHING_KEY):
            marks[key_id] = max(at, marks.get(key_id, 0.0))
        key_marks_write(marks)
        client.delete(FLUSHING_KEY)  # only now: a flush that died before here is redone
        return len(marks)
    finally:
        if client.get(LOCK_KEY) in (token, token.encode()):
            client.delete(LOCK_KEY)


def _push_quietly() -> None:
    try:
        key_marks_push()
    except Exception:
        logger.warning("key marks: push failed; kept for the next one", exc_info=True)
    finally:
        if not settings.REDIS_URL:
            close_old_connections()  # this thread's connection goes back (to the pool)


def _push_forever() -> None:
    while True:
        time.sleep(settings.TENANTS_KEY_MARKS_PUSH_S)
        if _pending:
            _push_quietly()


def _pusher_start() -> None:
    """One pusher thread per process (a forked child starts its own) and a last push at exit."""
    global _pusher_pid
    with _lock:
        if _pusher_pid == os.getpid():
            return
        _pusher_pid = os.getpid()
    threading.Thread(target=_push_forever, name="key-marks-push", daemon=True).start()
    atexit.register(_push_quietly)
