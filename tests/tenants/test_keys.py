"""API keys: secrets never stored, what is rejected, rotation, scopes, the cache and its queries."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import time_machine
from asgiref.sync import sync_to_async
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from core.errors import Conflict, PermissionRefused, ValidationFailed
from tenants import keycache, keyuse, services
from tenants.keycache import KeyCache
from tenants.models import APIKey, AuditEvent, KeyKind, Membership
from tenants.permissions import Role
from tenants.selectors import token_digest
from tests import factories

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def _all_database_text() -> str:
    """Every column of every row of every table, as text."""
    chunks: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - table names come from the schema
            for row in cursor.fetchall():
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


def test_plaintext_is_never_stored(redis_url: str) -> None:
    tenant, users = factories.tenant_with_members("plain")
    secrets: list[str] = []
    for role in (Role.OWNER, Role.ADMIN, Role.DEVELOPER):
        secrets.append(factories.inference_key(tenant, users[role])[1])
        secrets.append(factories.admin_key(tenant, users[role])[1])
    key, raw = factories.inference_key(tenant, users[Role.OWNER])
    secrets.append(raw)
    secrets.append(services.key_rotate(key=key, actor=factories.SYSTEM, grace=timedelta(minutes=5))[1])
    # Through the API too, and authenticated once each so the cache holds them.
    client = APIClient()
    client.force_login(users[Role.OWNER])
    response = client.post("/api/v1/tenants/plain/keys/", {"name": "api"}, format="json")
    assert response.status_code == 201
    secrets.append(response.json()["secret"])
    _, invite_token = services.invitation_create(
        tenant=tenant, email="someone@example.com", role="viewer", actor=factories.SYSTEM, send=False
    )
    for secret in secrets:
        assert services.key_authenticate(secret) is not None
    text = _all_database_text()
    assert APIKey.objects.count() == len(secrets)
    for secret in [*secrets, invite_token]:
        random_part = secret.removeprefix("sk-admin-").removeprefix("sk-")
        assert random_part[:-4] not in text
        assert secret not in text
    # What is stored: the digest and the last 4 characters.
    stored = APIKey.objects.get(last4=secrets[0][-4:])
    assert len(stored.digest) == 64 and stored.digest != secrets[0]
    # Redis (the version counter, last-used markers) holds no secrets either.
    client_redis = redis.Redis.from_url(redis_url)
    blob = b"".join(
        (k + (client_redis.dump(k) or b""))
        for k in client_redis.scan_iter(count=1000)
        if client_redis.type(k) != b"none"
    )
    for secret in secrets:
        assert secret.encode() not in blob


def test_key_format() -> None:
    tenant, users = factories.tenant_with_members("fmt")
    key, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    admin, admin_raw = factories.admin_key(tenant, users[Role.ADMIN])
    assert raw.startswith("sk-") and not raw.startswith("sk-admin-") and len(raw) == 43
    assert admin_raw.startswith("sk-admin-")
    assert key.last4 == raw[-4:] and key.masked == f"sk-...{raw[-4:]}"
    assert raw[3:].isalnum()
    assert key.scopes == ["inference", "models:read"]
    assert "inference" not in admin.scopes and "members:write" in admin.scopes


def test_revoked_expired_and_suspended_keys_are_rejected() -> None:
    tenant, users = factories.tenant_with_members("rej")
    dev = users[Role.DEVELOPER]
    revoked, revoked_raw = factories.inference_key(tenant, dev)
    assert services.key_authenticate(revoked_raw) is not None  # warm now
    services.key_revoke(key=revoked, actor=factories.SYSTEM)
    assert services.key_authenticate(revoked_raw) is None

    expiring, expiring_raw = factories.inference_key(tenant, dev, expires_at=timezone.now() + timedelta(hours=1))
    context = services.key_authenticate(expiring_raw)
    assert context is not None and context.expires_at_ts == pytest.approx(expiring.expires_at.timestamp())
    APIKey.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    services.key_cache().clear()
    assert services.key_authenticate(expiring_raw) is None

    _, live_raw = factories.inference_key(tenant, dev)
    assert services.key_authenticate(live_raw) is not None
    services.tenant_suspend(tenant=tenant, actor=factories.SYSTEM)
    assert services.key_authenticate(live_raw) is None
    services.tenant_reactivate(tenant=tenant, actor=factories.SYSTEM)
    assert services.key_authenticate(live_raw) is not None
    services.tenant_close(tenant=tenant, actor=factories.SYSTEM)
    assert services.key_authenticate(live_raw) is None

    for junk in ["", "sk-", "sk-short", "Bearer sk-x", "x" * 500, "sk-" + "a" * 40, "sk-admin-" + "b" * 40]:
        assert services.key_authenticate(junk) is None


def test_expiry_is_checked_on_warm_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant, users = factories.tenant_with_members("warmexp")
    _, raw = factories.inference_key(tenant, users[Role.DEVELOPER], expires_at=timezone.now() + timedelta(minutes=5))
    assert services.key_authenticate(raw) is not None
    later = time.time() + 301
    monkeypatch.setattr(keycache.time, "time", lambda: later)
    # No version change, no database: the cached entry itself knows when it ends.
    assert services.key_authenticate(raw) is None


def test_rotation_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    tenant, users = factories.tenant_with_members("rot")
    old, old_raw = factories.inference_key(tenant, users[Role.DEVELOPER], allowed_models=["demo-llama"])
    new, new_raw = services.key_rotate(key=old, actor=factories.SYSTEM, grace=timedelta(seconds=120))
    assert new_raw != old_raw and new.pk != old.pk
    assert new.allowed_models == ["demo-llama"] and new.scopes == old.scopes and new.created_by == old.created_by
    old.refresh_from_db()
    assert old.replaced_by_id == new.pk
    old_context = services.key_authenticate(old_raw)
    assert old_context is not None and old_context.expires_at_ts is not None
    assert services.key_authenticate(new_raw) is not None
    later = time.time() + 121
    monkeypatch.setattr(keycache.time, "time", lambda: later)
    assert services.key_authenticate(old_raw) is None  # grace over, even warm
    assert services.key_authenticate(new_raw) is not None
    monkeypatch.undo()
    # Without a grace period the old key stops at once; a rotated key cannot be rotated again.
    newer, newer_raw = services.key_rotate(key=new, actor=factories.SYSTEM)
    assert services.key_authenticate(new_raw) is None
    assert services.key_authenticate(newer_raw) is not None
    with pytest.raises(Exception, match="cannot be rotated"):
        services.key_rotate(key=new, actor=factories.SYSTEM)
    with pytest.raises(ValidationFailed):
        services.key_rotate(key=newer, actor=factories.SYSTEM, grace=timedelta(days=30))


def test_scope_escalation_is_refused() -> None:
    tenant, users = factories.tenant_with_members("esc")
    with pytest.raises(PermissionRefused, match="members:write"):
        services.key_create(
            tenant=tenant,
            created_by=users[Role.DEVELOPER],
            name="x",
            kind=KeyKind.ADMIN,
            scopes=["members:write"],
            actor=factories.SYSTEM,
        )
    with pytest.raises(PermissionRefused):
        services.key_create(
            tenant=tenant, created_by=users[Role.FINANCE], name="x", scopes=["inference"], actor=factories.SYSTEM
        )
    with pytest.raises(PermissionRefused, match="limits:write"):
        services.key_create(
            tenant=tenant,
            created_by=users[Role.OWNER],
            name="x",
            kind=KeyKind.ADMIN,
            scopes=["limits:write"],
            actor=factories.SYSTEM,
        )
    # Staff may grant any scope.
    staff = factories.staff_user()
    key, _ = services.key_create(
        tenant=tenant, created_by=staff, name="x", kind=KeyKind.ADMIN, scopes=["limits:write"], actor=factories.SYSTEM
    )
    assert key.scopes == ["limits:write"]

    # Through the API: an admin key holding keys:write alone cannot mint a broader key.
    _, raw = factories.admin_key(tenant, users[Role.ADMIN], ["keys:write", "keys:read"])
    client = factories.key_client(raw)
    before = APIKey.objects.count()
    response = client.post(
        "/api/v1/tenants/esc/keys/", {"name": "wider", "kind": "admin", "scopes": ["audit:read"]}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "scope_escalation"
    assert APIKey.objects.count() == before
    # A developer's session cannot either.
    client = factories.session_client(users[Role.DEVELOPER])
    response = client.post(
        "/api/v1/tenants/esc/keys/", {"name": "wider", "kind": "admin", "scopes": ["members:write"]}, format="json"
    )
    assert response.status_code == 403 and APIKey.objects.count() == before


def test_a_keys_powers_follow_its_creators_role() -> None:
    tenant, users = factories.tenant_with_members("follow")
    admin = users[Role.ADMIN]
    _, raw = factories.admin_key(tenant, admin)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/tenants/follow/audit-events/").status_code == 200
    row = Membership.objects.get(tenant=tenant, user=admin)
    services.membership_role_change(membership=row, role="viewer", actor=factories.SYSTEM)
    assert client.get("/api/v1/tenants/follow/audit-events/").status_code == 403
    assert client.get("/api/v1/tenants/follow/members/").status_code == 200  # viewers read members
    services.membership_remove(membership=row, actor=factories.SYSTEM)
    assert client.get("/api/v1/tenants/follow/members/").status_code == 403


def test_developers_manage_only_their_own_keys() -> None:
    tenant, users = factories.tenant_with_members("own")
    mine, _ = factories.inference_key(tenant, users[Role.DEVELOPER])
    theirs, _ = factories.inference_key(tenant, users[Role.ADMIN])
    client = APIClient()
    client.force_login(users[Role.DEVELOPER])
    listed = client.get("/api/v1/tenants/own/keys/").json()
    assert [k["id"] for k in listed["results"]] == [mine.pk]
    assert client.get(f"/api/v1/tenants/own/keys/{theirs.pk}/").status_code == 404
    assert client.post(f"/api/v1/tenants/own/keys/{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"/api/v1/tenants/own/keys/{theirs.pk}/rotate/", {}, format="json").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert client.post(f"/api/v1/tenants/own/keys/{mine.pk}/revoke/").status_code == 200
    # Admins see and manage every key.
    admin = APIClient()
    admin.force_login(users[Role.ADMIN])
    assert admin.get("/api/v1/tenants/own/keys/").json()["count"] == 2


def test_key_authenticate_query_counts(django_assert_num_queries: Any) -> None:
    tenant, users = factories.tenant_with_members("qc", requests_per_minute=100, monthly_spend_cap=Decimal("50"))
    _, raw = factories.inference_key(tenant, users[Role.DEVELOPER], limits={"requests_per_minute": 10})
    services.key_cache().current_version()
    with django_assert_num_queries(1):
        cold = services.key_authenticate(raw)
    with django_assert_num_queries(0):
        for _ in range(100):
            assert services.key_authenticate(raw) == cold
    assert cold is not None
    assert cold.key_limits.requests_per_minute == 10 and cold.tenant_limits.requests_per_minute == 100
    assert cold.key_limits.monthly_spend_cap == Decimal("50")
    # Unknown keys are cached too; malformed ones never reach the database.
    with django_assert_num_queries(1):
        assert services.key_authenticate("sk-" + "z" * 40) is None
    with django_assert_num_queries(0):
        assert services.key_authenticate("sk-" + "z" * 40) is None
        assert services.key_authenticate("not-a-key") is None


def test_key_mark_used_notes_at_most_once_a_minute_and_writes_nothing(django_assert_num_queries: Any) -> None:
    tenant, users = factories.tenant_with_members("used")
    key, _ = factories.inference_key(tenant, users[Role.DEVELOPER])
    with django_assert_num_queries(0):
        services.key_mark_used(key.pk)
    noted = keyuse.key_use_pending()[key.pk]
    with django_assert_num_queries(0):
        for _ in range(50):
            services.key_mark_used(key.pk)
    assert keyuse.key_use_pending()[key.pk] == noted, "the throttle kept the first note"
    services.key_marks_flush()
    key.refresh_from_db()
    assert key.last_used_at is not None and abs(key.last_used_at.timestamp() - noted) < 0.001


def test_second_cache_sees_revocation_within_a_second(redis_url: str) -> None:
    """Two independent caches (as in two processes) share only Redis and the database."""
    tenant, users = factories.tenant_with_members("two")
    key, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    other = KeyCache(redis_url)
    digest = token_digest(raw)
    context = services.key_authenticate(raw)
    other.put(digest, context, other.current_version(), None)
    assert other.lookup(digest) == (True, context, "")
    services.key_revoke(key=key, actor=factories.SYSTEM)
    started = time.monotonic()
    while other.lookup(digest)[0] and time.monotonic() - started < 2:
        time.sleep(0.01)
    assert time.monotonic() - started < 1.0
    assert other.lookup(digest) == (False, None, "")


def test_in_process_cache_without_redis() -> None:
    cache = KeyCache("")
    version = cache.current_version()
    cache.put("d", None, version, None)
    assert cache.lookup("d") == (True, None, "")
    cache.bump()
    assert cache.lookup("d") == (False, None, "")


_WATCHER = textwrap.dedent(
    """
    import os, sys, time
    import django
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    django.setup()
    from tenants import services
    raw = sys.argv[1]
    assert services.key_authenticate(raw) is not None
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if services.key_authenticate(raw) is None:
            print("rejected", time.time(), flush=True)
            sys.exit(0)
        time.sleep(0.005)
    print("timeout", flush=True)
    sys.exit(1)
    """
)


@pytest.mark.django_db(transaction=True)
def test_revocation_reaches_another_process_within_a_second(redis_url: str) -> None:
    tenant, users = factories.tenant_with_members("proc")
    key, raw = factories.inference_key(tenant, users[Role.DEVELOPER])
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, raw],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        line = watcher.stdout.readline().strip()
        assert line == "ready", watcher.stderr.read() if watcher.stderr else line
        revoked_at = time.time()
        services.key_revoke(key=key, actor=factories.SYSTEM)
        line = watcher.stdout.readline().strip()
        assert line.startswith("rejected"), line
        assert float(line.split()[1]) - revoked_at < 1.0
        assert watcher.wait(timeout=10) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


@pytest.mark.django_db(transaction=True)
async def test_async_authenticate_and_mark_used() -> None:
    tenant, users = await sync_to_async(factories.tenant_with_members)("async")
    key, raw = await sync_to_async(factories.inference_key)(tenant, users[Role.DEVELOPER])
    context = await services.akey_authenticate(raw)
    assert context is not None and context.key_id == key.pk
    assert await services.akey_authenticate(raw) == context
    assert await services.akey_authenticate("sk-nope") is None
    await services.akey_mark_used(key.pk)
    await sync_to_async(services.key_marks_flush)()
    await key.arefresh_from_db()
    assert key.last_used_at is not None
    # The worker thread's connection would otherwise hold up the table flush after the test.
    await sync_to_async(lambda: connection.close())()


def test_key_check_says_why(monkeypatch: pytest.MonkeyPatch, django_assert_num_queries: Any) -> None:
    tenant, users = factories.tenant_with_members("why")
    dev = users[Role.DEVELOPER]
    assert services.key_check("nonsense") == (None, "malformed")
    assert services.key_check("sk-" + "q" * 40) == (None, "unknown")
    revoked, revoked_raw = factories.inference_key(tenant, dev)
    services.key_revoke(key=revoked, actor=factories.SYSTEM)
    assert services.key_check(revoked_raw) == (None, "revoked")
    _expiring, expiring_raw = factories.inference_key(tenant, dev, expires_at=timezone.now() + timedelta(minutes=1))
    context, reason = services.key_check(expiring_raw)
    assert context is not None and reason == ""
    later = time.time() + 61
    monkeypatch.setattr(keycache.time, "time", lambda: later)
    with django_assert_num_queries(0):
        assert services.key_check(expiring_raw) == (None, "expired")
    monkeypatch.undo()
    _, live_raw = factories.inference_key(tenant, dev)
    services.tenant_suspend(tenant=tenant, actor=factories.SYSTEM)
    assert services.key_check(live_raw) == (None, "tenant_suspended")
    with django_assert_num_queries(0):  # the reason is cached with the entry
        assert services.key_check(live_raw) == (None, "tenant_suspended")
    services.tenant_close(tenant=tenant, actor=factories.SYSTEM)
    assert services.key_check(live_raw) == (None, "tenant_closed")


def test_expiry_is_final_through_the_api_and_the_service() -> None:
    tenant, users = factories.tenant_with_members("final")
    owner = users[Role.OWNER]
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        key, raw = factories.inference_key(tenant, owner, expires_at=start + timedelta(hours=1))
        client = factories.session_client(owner)
        # Before it expires, the expiry can move or go.
        later = (start + timedelta(hours=2)).isoformat()
        moved = client.patch(f"/api/v1/tenants/final/keys/{key.pk}/", {"expires_at": later}, format="json")
        assert moved.status_code == 200, moved.content
        clock.move_to(start + timedelta(hours=3))
        services.key_cache().clear()
        assert services.key_authenticate(raw) is None
        events = AuditEvent.objects.filter(tenant=tenant, action="key.update").count()
        for change in ({"expires_at": None}, {"expires_at": (start + timedelta(days=30)).isoformat()}):
            refused = client.patch(f"/api/v1/tenants/final/keys/{key.pk}/", change, format="json")
            assert refused.status_code == 409, refused.content
            assert refused.json()["error"]["code"] == "key_expired"
        with pytest.raises(Conflict):
            services.key_update(key=key, actor=factories.SYSTEM, expires_at=None)
        key.refresh_from_db()
        assert key.expires_at == start + timedelta(hours=2)
        assert AuditEvent.objects.filter(tenant=tenant, action="key.update").count() == events
        services.key_cache().clear()
        assert services.key_authenticate(raw) is None
        # Renaming an expired key (no change of expiry) is still allowed: it is bookkeeping.
        renamed = client.patch(f"/api/v1/tenants/final/keys/{key.pk}/", {"name": "old ci key"}, format="json")
        assert renamed.status_code == 200, renamed.content


def test_an_admin_key_creates_inference_keys_that_can_call_v1() -> None:
    tenant, users = factories.tenant_with_members("mint")
    _, admin_raw = factories.admin_key(tenant, users[Role.ADMIN])
    client = factories.key_client(admin_raw)
    created = client.post("/api/v1/tenants/mint/keys/", {"name": "ci", "kind": "inference"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body["scopes"]) == {"inference", "models:read"}
    context = services.key_authenticate(body["secret"])
    assert context is not None and context.has_scope("inference")


def test_an_admin_key_of_a_creator_without_inference_says_what_is_missing() -> None:
    tenant, users = factories.tenant_with_members("nomint")
    admin = users[Role.ADMIN]
    _, admin_raw = factories.admin_key(tenant, admin)
    # The creator is now a viewer: the key cannot mint inference keys any more.
    services.membership_role_change(
        membership=Membership.objects.get(tenant=tenant, user=admin), role=Role.VIEWER, actor=factories.SYSTEM
    )
    services.key_cache().clear()
    before = APIKey.objects.filter(tenant=tenant).count()
    client = factories.key_client(admin_raw)
    refused = client.post("/api/v1/tenants/nomint/keys/", {"name": "ci", "kind": "inference"}, format="json")
    assert refused.status_code == 403, refused.content
    assert APIKey.objects.filter(tenant=tenant).count() == before
