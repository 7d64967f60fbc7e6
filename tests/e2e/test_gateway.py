"""Both planes as real processes: the control plane under uvicorn (2 workers), real inference
nodes serving the demo model, and the official `openai` client with a tenant's key."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import orjson
import pytest

from gateway import services as gw
from gateway.models import ModelVersion, NodeState
from tenants import services as tn
from tenants.selectors import key_get_in_tenant
from tests import factories
from tests.e2e.support import ControlPlane, control_plane
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, inference_node
from wire.client import usage_pull

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ACTOR = factories.SYSTEM


REGISTRY_REFRESH_S = 0.2


@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    with inference_node(secret=DEFAULT_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def server(django_db_setup: Any, node: InferenceNode) -> Iterator[ControlPlane]:
    env = {
        "INFERENCE_SHARED_SECRET": DEFAULT_SECRET,
        "GATEWAY_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S),
        "GATEWAY_NODE_FAIL_COOLDOWN_S": "5",
    }
    with control_plane(workers=2, env=env) as cp:
        yield cp


@dataclass
class World:
    tenant: Any
    key_id: int
    raw: str
    version: ModelVersion


def make_world(node_url: str, *, limits: dict[str, Any] | None = None) -> World:
    tenant = factories.tenant(**(limits or {}))
    key, raw = factories.inference_key(tenant)
    model = gw.model_create(name="demo-llama", actor=ACTOR)
    version = gw.model_version_create(model=model, version="v1", status="active", actor=ACTOR)
    gw.model_grant_create(tenant=tenant, model=model, actor=ACTOR)
    gw.node_register(name="node-a", base_url=node_url, versions=[version], state=NodeState.UP, actor=ACTOR)
    # Each server process reloads its routing snapshot at most this long after a registry change.
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    return World(tenant, key.id, raw, version)


def client_for(server: ControlPlane, raw: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=raw, base_url=server.api_base, max_retries=0, timeout=30)


def journal(node: InferenceNode) -> dict[str, dict[str, Any]]:
    """The node's records by the client's request id (each test sends its own ids)."""
    page = usage_pull(node.base_url, node.secret, after=0, limit=1000)
    return {r["client_request_id"]: r for r in page["records"]}


def raw_get(url: str, raw: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so successive calls spread over the workers)."""
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {raw}", "connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_openai_client_chat_and_completions_match_the_journal(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node.base_url, limits={"requests_per_minute": 1000, "tokens_per_minute": 100_000})
    client = client_for(server, world.raw)

    rid = f"e2e-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="demo-llama", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8,
        extra_headers={"x-request-id": rid},
    )  # fmt: skip
    chat = raw.parse()
    assert raw.headers["x-request-id"] == rid
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) <= 999
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens == 8

    rid_text = f"e2e-{uuid.uuid4().hex}"
    text = client.completions.create(
        model="demo-llama", prompt="Once upon a time", max_tokens=5, extra_headers={"x-request-id": rid_text}
    )
    assert text.choices[0].text and text.usage is not None and text.usage.completion_tokens == 5

    rid_stream = f"e2e-{uuid.uuid4().hex}"
    chunks = list(
        client.chat.completions.create(
            model="demo-llama", messages=[{"role": "user", "content": "Stream please"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-request-id": rid_stream},
        )
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6

    rid_plain = f"e2e-{uuid.uuid4().hex}"
    plain = list(
        client.completions.create(
            model="demo-llama", prompt="abc", max_tokens=4, stream=True, extra_headers={"x-request-id": rid_plain}
        )
    )
    assert "".join(c.choices[0].text for c in plain if c.choices)
    assert all(c.usage is None for c in plain)  # not asked for: the gateway removed it

    # Usage the client saw is what the node journaled, request by request.
    deadline = time.monotonic() + 5
    records: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        records = journal(node)
        if all(r in records for r in (rid, rid_text, rid_stream, rid_plain)):
            break
        time.sleep(0.1)
    for request_id, seen in ((rid, chat.usage), (rid_text, text.usage), (rid_stream, usage)):
        record = records[request_id]
        assert (record["prompt_tokens"], record["completion_tokens"]) == (seen.prompt_tokens, seen.completion_tokens)
        assert record["tenant"] == world.tenant.id and record["key"] == world.key_id
        assert record["model_version"] == "v1"
    assert records[rid_plain]["completion_tokens"] == 4


def test_models_lists_exactly_the_allowed_models(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node.base_url)
    other = factories.tenant()
    private = gw.model_create(name="globex-private", actor=ACTOR)
    gw.model_version_create(model=private, version="v1", status="active", actor=ACTOR)
    gw.model_grant_create(tenant=other, model=private, actor=ACTOR)
    gw.model_create(name="ungranted", actor=ACTOR)
    client = client_for(server, world.raw)
    assert [m.id for m in client.models.list()] == ["demo-llama"]
    # Another tenant's model looks exactly like one that does not exist.
    with pytest.raises(openai.NotFoundError) as denied:
        client.chat.completions.create(model="globex-private", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found" and denied.value.code == "model_not_found"
    assert denied.value.param == missing.value.param == "model"
    assert str(denied.value.message).replace("globex-private", "M") == str(missing.value.message).replace(
        "no-such-model", "M"
    )
    with pytest.raises(openai.BadRequestError) as bad:  # n above the plan cap (GATEWAY_MAX_N)
        client.chat.completions.create(model="demo-llama", messages=[{"role": "user", "content": "x"}], n=9)
    assert bad.value.param == "n"


def test_revoked_key_is_refused_by_every_worker_within_a_second(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node.base_url)
    # Warm both workers' key caches (fresh connections land on either worker).
    for _ in range(20):
        status, _, body = raw_get(server.api_base + "/models", world.raw)
        assert status == 200, body
    key = key_get_in_tenant(world.key_id, world.tenant)
    tn.key_revoke(key=key, actor=ACTOR)
    revoked_at = time.monotonic()
    time.sleep(1.0)
    statuses = [raw_get(server.api_base + "/models", world.raw)[0] for _ in range(30)]
    assert time.monotonic() - revoked_at < 5
    assert statuses == [401] * 30
    client = client_for(server, world.raw)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="demo-llama", messages=[{"role": "user", "content": "x"}], max_tokens=2)


def test_failover_then_503_with_nothing_billed(server: ControlPlane, node: InferenceNode) -> None:
    # A slow token refill (1,000 a minute) so the headers show what was given back.
    world = make_world(node.base_url, limits={"tokens_per_minute": 1000})
    with inference_node(secret=DEFAULT_SECRET) as node_b:
        gw.node_register(name="node-b", base_url=node_b.base_url, versions=[world.version], state=NodeState.UP,
                         actor=ACTOR)  # fmt: skip
        client = client_for(server, world.raw)
        messages = [{"role": "user", "content": "hi"}]
        node_b.kill()  # a crash: the registry still says it is up
        for _ in range(6):
            reply = client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=2)
            assert reply.choices[0].message.content is not None
        node.kill()  # now nothing is left
        try:
            rid = f"e2e-{uuid.uuid4().hex}"
            started = time.monotonic()
            raw = client.chat.completions.with_raw_response
            with pytest.raises(openai.InternalServerError) as unavailable:
                raw.create(model="demo-llama", messages=messages, max_tokens=400, extra_headers={"x-request-id": rid})
            assert time.monotonic() - started < 1.0
            response = unavailable.value.response
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "service_unavailable"
            remaining_tokens = int(response.headers["x-ratelimit-remaining-tokens"])
            time.sleep(0.2)
            # Nothing billed: the reservation of about 405 tokens went back (refill adds only ~17/s).
            status, headers, _ = raw_get(server.api_base + "/models", world.raw)
            assert status == 200
            assert int(headers["x-ratelimit-remaining-tokens"]) >= remaining_tokens + 350
        finally:
            node.restart()
        node_b.restart()
        assert rid not in journal(node) and rid not in journal(node_b)


def test_quota_over_http_and_readiness(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node.base_url, limits={"requests_per_minute": 3})
    client = client_for(server, world.raw)
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(3):
        client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=1)
    response = limited.value.response
    assert response.headers["retry-after"] == "20"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert orjson.loads(response.content)["error"]["code"] == "rate_limit_exceeded"
    with urllib.request.urlopen(server.base_url + "/readyz", timeout=5) as ready:
        assert orjson.loads(ready.read())["checks"]["inference_nodes"] == "ok"


def test_a_reused_request_id_bills_every_request_and_only_its_own_tenant(
    server: ControlPlane, node: InferenceNode, settings: Any
) -> None:
    from billing.models import UsageRecord
    from billing.services.ingestion import usage_ingest_node

    settings.INFERENCE_SHARED_SECRET = DEFAULT_SECRET
    world = make_world(node.base_url)
    other = factories.tenant()
    _, other_raw = factories.inference_key(other)
    gw.model_grant_create(tenant=other, model=world.version.model, actor=ACTOR)
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    rid = f"e2e-reused-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": "hi"}]
    for raw in [world.raw] * 5 + [other_raw]:
        reply = client_for(server, raw).chat.completions.with_raw_response.create(
            model="demo-llama", messages=messages, max_tokens=2, extra_headers={"x-request-id": rid}
        )
        assert reply.headers["x-request-id"] == rid
    page = usage_pull(node.base_url, node.secret, after=0, limit=10000)
    mine = [r for r in page["records"] if r["client_request_id"] == rid]
    assert len(mine) == 6 and len({r["request_id"] for r in mine}) == 6  # six attempts, six ids
    registered = gw.node_register(
        name="node-a", base_url=node.base_url, versions=[world.version], state=NodeState.UP, actor=ACTOR
    )
    usage_ingest_node(registered)
    rows = UsageRecord.objects.filter(client_request_id=rid)
    assert rows.filter(tenant=world.tenant).count() == 5
    assert rows.filter(tenant=other).count() == 1
