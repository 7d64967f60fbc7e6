"""`/v1/embeddings` through both planes as real processes: the official `openai` client, the real
all-MiniLM-L6-v2 on the embedding engine, quotas, model access, journal, ledger and price."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import openai
import pytest
from openai.types import CreateEmbeddingResponse

from gateway import services as gw
from gateway.models import NodeState
from tests import factories
from tests.e2e.support import ControlPlane, control_plane
from tests.support.inference_node import DEFAULT_SECRET, InferenceNode, embedding_model_path, inference_node
from wire.client import usage_pull

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ACTOR = factories.SYSTEM
MODEL = "all-minilm-l6-v2"
REGISTRY_REFRESH_S = 0.2
PRICE_PER_1M = "0.020000"


@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    with inference_node(secret=DEFAULT_SECRET, models=[(MODEL, "v1", "embedding")], INFERENCE_MAX_BATCH_SIZE="64") as n:
        yield n


@pytest.fixture(scope="module")
def server(django_db_setup: Any, node: InferenceNode) -> Iterator[ControlPlane]:
    env = {"INFERENCE_SHARED_SECRET": DEFAULT_SECRET, "GATEWAY_REGISTRY_REFRESH_S": str(REGISTRY_REFRESH_S)}
    with control_plane(workers=2, env=env) as cp:
        yield cp


@dataclass
class World:
    tenant: Any
    raw: str
    version: Any


def make_world(node: InferenceNode, *, artifact: bool = True) -> World:
    tenant = factories.tenant(requests_per_minute=10_000, tokens_per_minute=10_000_000)
    priced = factories.plan_with_price(model=MODEL, input_per_1m=PRICE_PER_1M, output_per_1m="0")
    factories.subscribe_directly(tenant, priced.plan)
    _, raw = factories.inference_key(tenant)
    model = gw.model_create(name=MODEL, actor=ACTOR)
    version = gw.model_version_create(
        model=model,
        version="v1",
        status="active",
        engine="embedding",
        # The gateway counts the inputs' tokens with the model's own tokenizer when it has it.
        artifact_uri=str(embedding_model_path()) if artifact else "",
        actor=ACTOR,
    )
    gw.model_grant_create(tenant=tenant, model=model, actor=ACTOR)
    gw.node_register(name="node-emb", base_url=node.base_url, versions=[version], state=NodeState.UP, actor=ACTOR)
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    return World(tenant, raw, version)


def client_for(server: ControlPlane, raw: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=raw, base_url=server.api_base, max_retries=0, timeout=60)


def journal_by_client_id(node: InferenceNode) -> dict[str, dict[str, Any]]:
    page = usage_pull(node.base_url, node.secret, after=0, limit=10000)
    return {r["client_request_id"]: r for r in page["records"]}


def ingest(node: InferenceNode, world: World, settings: Any) -> None:
    from billing.services.ingestion import usage_ingest_node

    settings.INFERENCE_SHARED_SECRET = DEFAULT_SECRET
    registered = gw.node_register(
        name="node-emb", base_url=node.base_url, versions=[world.version], state=NodeState.UP, actor=ACTOR
    )
    usage_ingest_node(registered)


def forward_passes(node: InferenceNode) -> int:
    with urllib.request.urlopen(node.base_url + "/metrics") as response:
        text = response.read().decode()
    match = re.search(r'mmorch_inference_embedding_forward_passes_total\{model="all-minilm-l6-v2"[^}]*\} (\S+)', text)
    assert match, text[-2000:]
    return int(float(match.group(1)))


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_openai_client_embeddings_end_to_end_and_billed(
    server: ControlPlane, node: InferenceNode, settings: Any
) -> None:
    from billing.models import UsageRecord

    world = make_world(node)
    client = client_for(server, world.raw)
    sentences = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Quarterly revenue grew by eight percent.",
    ]
    rid = f"emb-{uuid.uuid4().hex}"
    raw = client.embeddings.with_raw_response.create(
        model=MODEL,
        input=sentences,
        encoding_format="float",
        user="end-user-7",
        extra_body={"metadata": {"team": "search", "feature": "rerank"}},
        extra_headers={"x-request-id": rid},
    )
    reply = CreateEmbeddingResponse.model_validate_json(raw.text)
    assert reply.model == MODEL and len(reply.data) == 3 and len(reply.data[0].embedding) == 384
    paraphrase = cosine(reply.data[0].embedding, reply.data[1].embedding)
    unrelated = cosine(reply.data[0].embedding, reply.data[2].embedding)
    assert paraphrase > 0.5 and paraphrase - unrelated > 0.4, (paraphrase, unrelated)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 3 * 2
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"

    # The client's default is base64 (it decodes it); the same numbers as floats.
    b64 = client.embeddings.with_raw_response.create(model=MODEL, input=sentences[0], encoding_format="base64")
    encoded = json.loads(b64.text)["data"][0]["embedding"]  # OpenAI's type says floats: the client decodes
    assert isinstance(encoded, str)
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert np.array_equal(decoded, np.asarray(reply.data[0].embedding, dtype=np.float32))
    default = client.embeddings.create(model=MODEL, input=sentences[0])
    assert np.allclose(default.data[0].embedding, reply.data[0].embedding, atol=0)

    # A batch of 64, and token arrays.
    batch = client.embeddings.create(model=MODEL, input=[f"document number {i}" for i in range(64)])
    assert [d.index for d in batch.data] == list(range(64))
    tokens = client.embeddings.create(model=MODEL, input=[[7592, 2088], [2088]], encoding_format="float")
    hello = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert np.allclose(tokens.data[0].embedding, hello.data[0].embedding, atol=1e-6)
    assert tokens.usage.prompt_tokens == 4 + 3

    ingest(node, world, settings)
    row = UsageRecord.objects.get(client_request_id=rid)
    assert row.tenant_id == world.tenant.id and row.model_name == MODEL
    assert (row.prompt_tokens, row.completion_tokens) == (reply.usage.prompt_tokens, 0)
    assert row.cost == Decimal(reply.usage.prompt_tokens) * Decimal(PRICE_PER_1M) / 1_000_000
    assert (row.end_user, row.metadata) == ("end-user-7", {"team": "search", "feature": "rerank"})


def test_bad_input_is_a_400_and_nothing_is_billed(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node)
    client = client_for(server, world.raw)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "x", "dimensions": 64}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "word " * 400}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),  # type: ignore[dict-item]
        ({"input": "x", "extra_body": {"metadata": {f"k{i}": "v" for i in range(17)}}}, "metadata"),
        ({"input": "x", "extra_body": {"safety_identifier": "u" * 257}}, "safety_identifier"),
    ]
    for kwargs, param in cases:
        rid = f"emb-bad-{uuid.uuid4().hex}"
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=MODEL, extra_headers={"x-request-id": rid}, **kwargs)
        error = caught.value.body
        assert isinstance(error, dict) and error["param"] == param, (kwargs.keys(), error)
        assert rid not in journal_by_client_id(node)


def test_a_model_not_granted_looks_missing(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node)
    stranger = factories.tenant()
    _, stranger_raw = factories.inference_key(stranger)
    _, narrow_raw = factories.inference_key(world.tenant, allowed_models=["demo-llama"])
    time.sleep(REGISTRY_REFRESH_S * 1.5)
    for raw in (stranger_raw, narrow_raw):
        with pytest.raises(openai.NotFoundError) as caught:
            client_for(server, raw).embeddings.create(model=MODEL, input="hello")
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client_for(server, "sk-not-a-key-at-all").embeddings.create(model=MODEL, input="hello")
    _, unscoped = factories.inference_key(world.tenant, scopes=["models:read"])
    with pytest.raises(openai.PermissionDeniedError):
        client_for(server, unscoped).embeddings.create(model=MODEL, input="hello")
    oversized = ["x" * 1000] * 2000  # 2 MB: over the gateway's body limit
    with pytest.raises(openai.APIStatusError) as too_large:
        client_for(server, world.raw).embeddings.create(model=MODEL, input=oversized)
    assert too_large.value.status_code == 413
    assert MODEL in [m.id for m in client_for(server, world.raw).models.list()]


def test_concurrent_single_requests_share_forward_passes(server: ControlPlane, node: InferenceNode) -> None:
    world = make_world(node, artifact=False)  # the byte estimate reserves; the node's count settles
    client = client_for(server, world.raw)
    before = forward_passes(node)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: client.embeddings.create(model=MODEL, input=f"caller {i}"), range(32)))
    assert all(len(r.data) == 1 for r in replies)
    # 32 requests, 16 in flight at a time: unbatched they would take 32 forward passes.
    assert forward_passes(node) - before < 32
