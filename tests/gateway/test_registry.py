"""Registry services, the management API, grants sync, node health and readiness."""

from __future__ import annotations

import io
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from core.errors import Conflict, ValidationFailed
from gateway import selectors, services
from gateway.models import InferenceNode, ModelGrant, NodeState
from tenants.models import AuditEvent
from tests import factories
from tests.gateway.fakenode import FakeNode

ACTOR = factories.SYSTEM


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(factories.staff_user())
    return client


@pytest.mark.django_db
def test_staff_manage_the_registry_through_the_api(staff_client: Client) -> None:
    r = staff_client.post(
        "/api/v1/models/", {"name": "llama-x", "description": "A model"}, content_type="application/json"
    )
    assert r.status_code == 201, r.content
    r = staff_client.post(
        "/api/v1/models/llama-x/versions/",
        {"version": "v1", "status": "active", "artifact_uri": "s3://models/llama-x/v1"},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    r = staff_client.post(
        "/api/v1/models/llama-x/versions/", {"version": "v2", "traffic_weight": 10}, content_type="application/json"
    )
    assert r.status_code == 201
    r = staff_client.put(
        "/api/v1/models/llama-x/traffic/", {"weights": {"v1": 80, "v2": 20}}, content_type="application/json"
    )
    assert r.status_code == 200
    assert {v["version"]: v["traffic_weight"] for v in r.json()["versions"]} == {"v1": 80, "v2": 20}
    r = staff_client.patch("/api/v1/models/llama-x/versions/v2/", {"status": "active"}, content_type="application/json")
    assert r.status_code == 200 and r.json()["status"] == "active"
    r = staff_client.post(
        "/api/v1/nodes/",
        {"name": "gpu-1", "base_url": "http://10.0.0.5:8100", "versions": ["llama-x@v1", "llama-x@v2"]},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    assert r.json()["versions"] == ["llama-x@v1", "llama-x@v2"] and r.json()["state"] == "down"
    r = staff_client.patch("/api/v1/nodes/gpu-1/", {"state": "draining"}, content_type="application/json")
    assert r.json()["state"] == "draining"
    assert staff_client.get("/api/v1/nodes/").json()["results"][0]["name"] == "gpu-1"
    tenant = factories.tenant()
    r = staff_client.post("/api/v1/models/llama-x/grants/", {"tenant": tenant.slug}, content_type="application/json")
    assert r.status_code == 201
    assert ModelGrant.objects.filter(tenant=tenant, model__name="llama-x").exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {
        "model.create",
        "model_version.create",
        "model.traffic_set",
        "model_version.update",
        "node.register",
        "node.update",
        "model_grant.create",
    } <= actions
    assert staff_client.delete(f"/api/v1/models/llama-x/grants/{tenant.slug}/").status_code == 204
    assert staff_client.delete("/api/v1/nodes/gpu-1/").status_code == 204
    assert not InferenceNode.objects.exists()


@pytest.mark.django_db
def test_registry_api_refuses_bad_input_and_non_staff(staff_client: Client) -> None:
    services.model_create(name="m1", actor=ACTOR)
    cases = [
        ("post", "/api/v1/models/", {"name": "bad name!"}, 400),
        ("post", "/api/v1/models/", {"name": "m1"}, 409),
        ("post", "/api/v1/models/", {"name": 5}, 400),
        ("post", "/api/v1/models/m1/versions/", {"version": "v1", "status": "live"}, 400),
        ("post", "/api/v1/models/m1/versions/", {"version": "v1", "traffic_weight": -1}, 400),
        ("put", "/api/v1/models/m1/traffic/", {"weights": {"nope": 1}}, 400),
        ("post", "/api/v1/nodes/", {"name": "n", "base_url": "not a url"}, 400),
        ("post", "/api/v1/nodes/", {"name": "n", "base_url": "http://10.0.0.9:1", "versions": ["m1@v9"]}, 404),
        ("post", "/api/v1/models/nope/versions/", {"version": "v1"}, 404),
    ]
    for method, path, body, status in cases:
        r = getattr(staff_client, method)(path, body, content_type="application/json")
        assert r.status_code == status, (path, body, r.content)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not InferenceNode.objects.exists()
    _, users = factories.tenant_with_members()
    member = Client()
    member.force_login(next(iter(users.values())))
    assert member.post("/api/v1/models/", {"name": "x"}, content_type="application/json").status_code == 403
    assert member.get("/api/v1/nodes/").status_code == 403
    assert Client().get("/api/v1/nodes/").status_code in (401, 403)


@pytest.mark.django_db
def test_tenants_read_only_their_models() -> None:
    a, a_users = factories.tenant_with_members(roles=["developer"])
    b = factories.tenant()
    mine = services.model_create(name="shared", actor=ACTOR)
    services.model_version_create(model=mine, version="v1", status="active", actor=ACTOR)
    services.model_version_create(model=mine, version="v0", status="retired", actor=ACTOR)
    theirs = services.model_create(name="b-only", actor=ACTOR)
    services.model_grant_create(tenant=a, model=mine, actor=ACTOR)
    services.model_grant_create(tenant=b, model=mine, actor=ACTOR)
    services.model_grant_create(tenant=b, model=theirs, actor=ACTOR)
    client = Client()
    client.force_login(next(iter(a_users.values())))
    r = client.get(f"/api/v1/tenants/{a.slug}/models/")
    assert r.status_code == 200
    assert [m["name"] for m in r.json()["results"]] == ["shared"]
    assert r.json()["results"][0]["versions"] == [{"version": "v1", "traffic_weight": 100}]
    # Another tenant's list looks like a missing tenant.
    assert client.get(f"/api/v1/tenants/{b.slug}/models/").status_code == 404
    _, raw = factories.admin_key(a, scopes=["models:read"])
    r = Client().get(f"/api/v1/tenants/{a.slug}/models/", headers={"authorization": f"Bearer {raw}"})
    assert r.status_code == 200 and len(r.json()["results"]) == 1
    _, raw = factories.admin_key(a, scopes=["usage:read"])
    r = Client().get(f"/api/v1/tenants/{a.slug}/models/", headers={"authorization": f"Bearer {raw}"})
    assert r.status_code == 403


@pytest.mark.django_db
def test_model_grants_sync_sets_plan_grants_exactly() -> None:
    tenant = factories.tenant()
    for name in ("a", "b", "c"):
        services.model_create(name=name, actor=ACTOR)
    services.model_grant_create(tenant=tenant, model=selectors.model_get("c"), actor=ACTOR)  # explicit grant
    services.model_grants_sync(tenant=tenant, model_names=["a", "b"], source="plan", actor=ACTOR)
    services.model_grants_sync(tenant=tenant, model_names=["b"], source="plan", actor=ACTOR)
    grants = set(ModelGrant.objects.filter(tenant=tenant).values_list("model__name", "source"))
    assert grants == {("b", "plan"), ("c", "grant")}  # plan sync leaves explicit grants alone
    with pytest.raises(ValidationFailed):
        services.model_grants_sync(tenant=tenant, model_names=["zzz"], source="plan", actor=ACTOR)
    with pytest.raises(ValidationFailed):
        services.model_grants_sync(tenant=tenant, model_names=["a"], source="gift", actor=ACTOR)
    assert set(ModelGrant.objects.filter(tenant=tenant).values_list("model__name", "source")) == grants
    assert AuditEvent.objects.filter(tenant=tenant, action="model_grant.sync").count() == 2


@pytest.mark.django_db
def test_node_register_is_idempotent() -> None:
    model = services.model_create(name="m", actor=ACTOR)
    v1 = services.model_version_create(model=model, version="v1", actor=ACTOR)
    first = services.node_register(name="n", base_url="http://127.0.0.1:1", versions=[v1], actor=ACTOR)
    again = services.node_register(name="n", base_url="http://127.0.0.1:1", versions=[v1], actor=ACTOR)
    assert first.pk == again.pk
    assert AuditEvent.objects.filter(action__startswith="node.").count() == 1
    with pytest.raises(Conflict):
        services.model_create(name="m", actor=ACTOR)
    assert [n.name for n in selectors.node_list()] == ["n"]


@pytest.mark.django_db(transaction=True)
async def test_probe_marks_nodes_up_and_down_and_readiness_follows(settings: Any) -> None:
    settings.GATEWAY_NODE_PROBE_TIMEOUT_S = 0.5
    node = await FakeNode(secret="x").start()

    def setup() -> None:
        model = services.model_create(name="m", actor=ACTOR)
        v1 = services.model_version_create(model=model, version="v1", actor=ACTOR)
        services.node_register(name="live", base_url=node.url, versions=[v1], actor=ACTOR)
        services.node_register(name="dead", base_url="http://127.0.0.1:9", versions=[v1], actor=ACTOR)

    await sync_to_async(setup)()
    from gateway.apps import _ready_node_check
    from gateway.tasks import nodes_probe

    assert (await sync_to_async(_ready_node_check)())[0] is False
    states = await sync_to_async(nodes_probe)()  # the Celery task body
    assert states == {"live": NodeState.UP, "dead": NodeState.DOWN}
    assert (await sync_to_async(_ready_node_check)())[0] is True
    live = await InferenceNode.objects.aget(name="live")
    dead = await InferenceNode.objects.aget(name="dead")
    assert live.last_heartbeat_at is not None and dead.last_error
    await node.stop()
    assert (await sync_to_async(nodes_probe)())["live"] == NodeState.DOWN
    assert (await sync_to_async(_ready_node_check)())[0] is False


@pytest.mark.django_db
def test_register_command_is_idempotent_and_keeps_other_versions() -> None:
    from django.core.management import CommandError, call_command

    acme = factories.tenant("acme-cmd")
    args = ["--model", "demo-llama", "--model-version", "v1", "--node", "node-1", "--url", "http://127.0.0.1:8100"]
    call_command("gateway_register", *args, "--grant", acme.slug, "--state", "up", stdout=io.StringIO())
    call_command("gateway_register", *args, "--grant", acme.slug, stdout=io.StringIO())  # again: nothing new
    call_command(
        "gateway_register",
        "--model",
        "demo-llama",
        "--model-version",
        "v2",
        "--node",
        "node-1",
        "--url",
        "http://127.0.0.1:8100",
        stdout=io.StringIO(),
    )
    node = selectors.node_get("node-1")
    assert sorted(v.label for v in node.versions.all()) == ["demo-llama@v1", "demo-llama@v2"]
    assert node.state == NodeState.UP  # a rerun without --state leaves the state alone
    assert ModelGrant.objects.filter(tenant=acme, model__name="demo-llama").count() == 1
    assert AuditEvent.objects.filter(action="model.create").count() == 1
    with pytest.raises(CommandError):
        call_command("gateway_register", *args, "--grant", "no-such-tenant", stdout=io.StringIO())
