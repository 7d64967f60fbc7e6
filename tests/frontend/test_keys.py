"""API keys in the dashboard: the secret once, revoke, rotate, developers limited to their own."""

from __future__ import annotations

from django.urls import reverse

from frontend.urls import urlpatterns
from tenants import services
from tenants.models import APIKey, AuditEvent
from tenants.permissions import Role
from tests.frontend.conftest import World, client_for


def test_create_shows_the_secret_once_and_it_authenticates(world: World) -> None:
    client = client_for(world.users[Role.ADMIN])
    response = client.post(
        "/t/acme/keys/new/",
        {"name": "ci runner", "kind": "inference", "allowed_models": ["demo-llama"], "expires_on": "2099-01-01"},
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    secret = response.context["secret"]
    assert secret.startswith("sk-") and secret in response.content.decode()
    key = APIKey.objects.get(name="ci runner")
    assert key.allowed_models == ["demo-llama"] and key.expires_at is not None
    assert key.created_by == world.users[Role.ADMIN]
    context = services.key_authenticate(secret)
    assert context is not None and context.key_id == key.pk
    # Never again: not on the list, not anywhere else.
    listing = client.get("/t/acme/keys/").content.decode()
    assert key.masked in listing and secret not in listing
    assert AuditEvent.objects.filter(action="key.create", target_id=str(key.pk)).exists()


def test_no_page_ever_shows_a_secret_again(world: World) -> None:
    owner = world.users[Role.OWNER]
    client = client_for(owner)
    secrets = [raw for _, raw in world.keys.values()]
    staff = client_for(world.staff)
    for pattern in urlpatterns:
        name = pattern.name or ""
        callback = pattern.callback
        if getattr(callback, "required_scope", None) is None and not getattr(callback, "staff_only", False):
            continue
        route = str(pattern.pattern)
        if "<int:" in route or "<path:" in route or name.endswith(("_create", "_revoke", "_rotate", "_status")):
            continue
        kwargs = {"slug": "acme"} if "<slug:slug>" in route else {}
        for who in (client, staff):
            response = who.get(reverse(f"frontend:{name}", kwargs=kwargs))
            body = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
            for raw in secrets:
                assert raw.encode() not in body, f"{name} shows a secret"


def test_developers_see_and_manage_only_their_own_keys(world: World) -> None:
    developer = client_for(world.users[Role.DEVELOPER])
    own, _ = world.keys[Role.DEVELOPER]
    owners, _ = world.keys[Role.OWNER]
    listing = developer.get("/t/acme/keys/").content.decode()
    assert own.masked in listing and owners.masked not in listing
    assert developer.post(f"/t/acme/keys/{owners.pk}/revoke/").status_code == 404
    assert developer.post(f"/t/acme/keys/{owners.pk}/rotate/", {"grace_seconds": "0"}).status_code == 404
    owners.refresh_from_db()
    assert owners.revoked_at is None
    assert developer.post(f"/t/acme/keys/{own.pk}/revoke/").status_code == 302
    own.refresh_from_db()
    assert own.revoked_at is not None
    # Admins manage everyone's keys.
    admin_listing = client_for(world.users[Role.ADMIN]).get("/t/acme/keys/").content.decode()
    assert own.masked in admin_listing and owners.masked in admin_listing


def test_revoke_stops_the_key_and_rotate_replaces_it(world: World) -> None:
    client = client_for(world.users[Role.OWNER])
    key, raw = world.keys[Role.OWNER]
    rotated = client.post(f"/t/acme/keys/{key.pk}/rotate/", {"grace_seconds": "3600"})
    assert rotated.status_code == 200
    new_raw = rotated.context["secret"]
    assert new_raw != raw and services.key_authenticate(new_raw) is not None
    # The old secret keeps working through the grace period.
    assert services.key_authenticate(raw) is not None
    new_key = APIKey.objects.get(replaced_by__isnull=True, name=key.name, tenant=world.acme, revoked_at__isnull=True)
    response = client.post(f"/t/acme/keys/{new_key.pk}/revoke/", follow=True)
    assert b"is revoked" in response.content
    assert services.key_authenticate(new_raw) is None


def test_another_tenants_key_is_not_found(world: World) -> None:
    key, _ = world.keys[Role.OWNER]
    outsider = client_for(world.outsider)
    assert outsider.post(f"/t/globex/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
