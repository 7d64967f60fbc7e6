"""Keys' `last_used_at`: noted in memory on the request path, pushed to Redis (or the database
without Redis), flushed by beat in one statement per batch, and never lost to a restart."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import time_machine
from django.db import connection
from django.utils import timezone

from tenants import keyuse, services
from tenants.models import APIKey
from tenants.permissions import Role
from tests import factories
from tests.e2e import support

pytestmark = pytest.mark.django_db


@pytest.fixture
def marks_redis(settings: Any, redis_url: str) -> Iterator[redis.Redis]:
    settings.REDIS_URL = redis_url
    services.key_cache_reset()
    client = redis.Redis.from_url(redis_url)
    client.delete(keyuse.USED_KEY, keyuse.FLUSHING_KEY, keyuse.LOCK_KEY)
    yield client
    client.delete(keyuse.USED_KEY, keyuse.FLUSHING_KEY, keyuse.LOCK_KEY)
    services.key_cache_reset()


@pytest.fixture
def no_redis(settings: Any) -> Iterator[None]:
    settings.REDIS_URL = ""
    services.key_cache_reset()
    yield
    services.key_cache_reset()


def _keys(count: int, prefix: str = "marks") -> list[APIKey]:
    tenant, users = factories.tenant_with_members(factories.unique(prefix))
    return [factories.inference_key(tenant, users[Role.DEVELOPER], name=f"k{i}")[0] for i in range(count)]


def test_marking_a_key_used_touches_no_database(marks_redis: Any, django_assert_num_queries: Any) -> None:
    (key,) = _keys(1)
    with django_assert_num_queries(0):
        for _ in range(50):
            services.key_mark_used(key.pk)
    assert set(keyuse.key_use_pending()) == {key.pk}
    key.refresh_from_db()
    assert key.last_used_at is None


def test_a_key_used_in_the_last_hour_shows_it_after_the_flush(marks_redis: Any) -> None:
    (key,) = _keys(1)
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        used_at = timezone.now()
        services.key_mark_used(key.pk)
        traveller.shift(timedelta(minutes=30))
        assert services.key_marks_flush() == 1
        key.refresh_from_db()
        assert key.last_used_at is not None
        assert abs((key.last_used_at - used_at).total_seconds()) < 1
        assert timezone.now() - key.last_used_at < timedelta(hours=1)
    assert not marks_redis.exists(keyuse.USED_KEY) and not marks_redis.exists(keyuse.FLUSHING_KEY)


def test_the_flush_is_one_statement_per_batch(marks_redis: Any, settings: Any, django_assert_num_queries: Any) -> None:
    settings.TENANTS_KEY_MARKS_BATCH = 2
    keys = _keys(5)
    for key in keys:
        services.key_mark_used(key.pk)
    services.key_marks_push()
    with django_assert_num_queries(3):  # 5 keys, 2 per statement
        assert services.key_marks_flush() == 5
    assert all(k.last_used_at is not None for k in APIKey.objects.filter(pk__in=[k.pk for k in keys]))


def test_marks_pending_in_redis_survive_a_process_restart(marks_redis: Any, redis_url: str) -> None:
    """A process notes a use and exits (its last push runs at exit); a new process flushes it."""
    (key,) = _keys(1)
    script = textwrap.dedent(f"""
        import django
        django.setup()
        from tenants import services
        services.key_mark_used({key.pk})
    """)
    env = {"DJANGO_SETTINGS_MODULE": "config.settings", "REDIS_URL": redis_url,
           "DATABASE_URL": support.test_database_url(), "PATH": "/usr/bin:/bin", "LOG_LEVEL": "WARNING",
           "TENANTS_KEY_MARKS_PUSH_S": "3600"}  # fmt: skip
    subprocess.run([sys.executable, "-c", script], cwd=support.REPO_ROOT, env=env, check=True, timeout=60)
    assert marks_redis.hexists(keyuse.USED_KEY, str(key.pk)), "the exiting process pushed its note"
    services.key_cache_reset()  # this process starts afresh too
    assert services.key_marks_flush() == 1
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_a_flush_that_dies_midway_is_finished_by_the_next(marks_redis: Any, monkeypatch: Any) -> None:
    keys = _keys(3)
    for key in keys:
        services.key_mark_used(key.pk)
    services.key_marks_push()

    def dies(marks: dict[int, float]) -> int:
        raise RuntimeError("worker killed")

    monkeypatch.setattr(keyuse, "key_marks_write", dies)
    with pytest.raises(RuntimeError):
        services.key_marks_flush()
    monkeypatch.undo()
    assert marks_redis.hlen(keyuse.FLUSHING_KEY) == 3, "the marks wait in the flushing hash"
    assert not marks_redis.exists(keyuse.LOCK_KEY), "the lock is released"
    # New uses arrive meanwhile: they go to the fresh hash and the next-but-one flush.
    (late,) = _keys(1, "late")
    services.key_mark_used(late.pk)
    assert services.key_marks_flush() == 3
    assert APIKey.objects.filter(pk__in=[k.pk for k in keys], last_used_at__isnull=False).count() == 3
    assert services.key_marks_flush() == 1
    late.refresh_from_db()
    assert late.last_used_at is not None


def test_a_running_flush_is_not_doubled(marks_redis: Any) -> None:
    (key,) = _keys(1)
    services.key_mark_used(key.pk)
    marks_redis.set(keyuse.LOCK_KEY, "someone-else", ex=60)
    assert services.key_marks_flush() == 0
    assert marks_redis.hexists(keyuse.USED_KEY, str(key.pk)), "left for the flush that holds the lock"


def test_the_newest_use_wins(marks_redis: Any) -> None:
    (key,) = _keys(1)
    newer = timezone.now()
    APIKey.objects.filter(pk=key.pk).update(last_used_at=newer)
    marks_redis.hset(keyuse.USED_KEY, str(key.pk), str(newer.timestamp() - 600))  # an older note
    assert services.key_marks_flush() == 1
    key.refresh_from_db()
    assert key.last_used_at == newer
    # Two processes racing: the merge keeps the later time.
    keyuse._pending[key.pk] = newer.timestamp() + 5
    services.key_marks_push()
    keyuse._pending[key.pk] = newer.timestamp() + 1
    services.key_marks_push()
    assert float(marks_redis.hget(keyuse.USED_KEY, str(key.pk)) or 0) == newer.timestamp() + 5


def test_revoked_and_deleted_keys_between_mark_and_flush(marks_redis: Any) -> None:
    revoked, deleted, kept = _keys(3)
    for key in (revoked, deleted, kept):
        services.key_mark_used(key.pk)
    services.key_revoke(key=revoked, actor=factories.SYSTEM)
    deleted_id = deleted.pk
    deleted.delete()
    marks_redis.hset(keyuse.USED_KEY, "not-a-number", "x")  # a stray entry is dropped, not fatal
    assert services.key_marks_flush() == 3
    revoked.refresh_from_db()
    kept.refresh_from_db()
    assert revoked.revoked_at is not None and revoked.last_used_at is not None  # it was used before
    assert kept.last_used_at is not None
    assert not APIKey.objects.filter(pk=deleted_id).exists()
    assert not marks_redis.exists(keyuse.FLUSHING_KEY)


def test_without_redis_a_push_writes_the_database(no_redis: None, django_assert_num_queries: Any) -> None:
    keys = _keys(2)
    for key in keys:
        services.key_mark_used(key.pk)
    with django_assert_num_queries(1):
        assert services.key_marks_flush() == 2
    assert APIKey.objects.filter(pk__in=[k.pk for k in keys], last_used_at__isnull=False).count() == 2
    assert keyuse.key_use_pending() == {}


@pytest.mark.django_db(transaction=True)
def test_without_redis_notes_are_written_at_shutdown(settings: Any) -> None:
    (key,) = _keys(1, "shutdown")
    script = textwrap.dedent(f"""
        import django
        django.setup()
        from tenants import services
        services.key_mark_used({key.pk})
    """)
    env = {"DJANGO_SETTINGS_MODULE": "config.settings", "REDIS_URL": "", "DATABASE_URL": support.test_database_url(),
           "PATH": "/usr/bin:/bin", "LOG_LEVEL": "WARNING", "TENANTS_KEY_MARKS_PUSH_S": "3600"}  # fmt: skip
    started = time.time()
    subprocess.run([sys.executable, "-c", script], cwd=support.REPO_ROOT, env=env, check=True, timeout=60)
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert key.last_used_at.timestamp() >= started - 1
    connection.close()
