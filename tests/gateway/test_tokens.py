"""Admission counts prompts with the model's own tokenizer and chat template: budgets hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from gateway.registry import registry
from gateway.tokens import prompt_counter
from tests.gateway.conftest import World
from tests.gateway.fakenode import FakeNode
from tests.gateway.test_public_api import CHAT, error_of, post
from tests.support.inference_node import demo_model_path

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def demo_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model_path()), local_files_only=True)


@pytest.fixture
async def honest_node(demo_tokenizer: Any, settings: Any) -> AsyncIterator[FakeNode]:
    """A node that reports the prompt tokens the demo model's template really makes."""
    node = await FakeNode(secret=settings.INFERENCE_SHARED_SECRET.split(",")[0], tokenizer=demo_tokenizer).start()
    prompt_counter.reset()
    yield node
    from gateway import forward

    await forward.upstream_client_close()
    await node.stop()
    prompt_counter.reset()


async def _with_artifact(world: World) -> None:
    def set_artifact() -> None:
        from gateway.models import ModelVersion

        ModelVersion.objects.filter(pk=world.version.pk).update(artifact_uri=str(demo_model_path()))

    await sync_to_async(set_artifact)()
    registry.invalidate()


async def test_the_monthly_budget_holds_under_100_concurrent_requests(
    honest_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(honest_node.url, limits={"monthly_token_budget": 300})
    await _with_artifact(world)
    body = {**CHAT, "max_tokens": 2}
    responses = await asyncio.gather(*(post(AsyncClient(), world, body) for _ in range(100)))
    served = [orjson.loads(r.content)["usage"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert served and refused
    assert all(r.status_code == 429 and error_of(r)["code"] == "insufficient_quota" for r in refused)
    # A one-word chat prompt is ~26 tokens through the template, not the ~5 a byte estimate says.
    assert served[0]["prompt_tokens"] > 20
    assert sum(u["total_tokens"] for u in served) <= 300 + body["max_tokens"]


async def test_a_huge_max_tokens_names_the_context_length_not_the_budget(
    honest_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(honest_node.url, limits={"monthly_token_budget": 300})
    await _with_artifact(world)
    response = await post(AsyncClient(), world, {**CHAT, "max_tokens": 10**12})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == ("max_tokens", "context_length_exceeded")
    assert "1024" in error["message"]
    assert honest_node.seen == []


async def test_a_template_refusal_is_a_400_at_the_gateway(
    honest_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(honest_node.url)
    await _with_artifact(world)
    opening = {**CHAT, "messages": [{"role": "assistant", "content": "I go first"}]}
    response = await post(AsyncClient(), world, opening)
    assert response.status_code == 400
    assert error_of(response)["param"] == "messages"
    assert honest_node.seen == []


async def test_the_local_count_is_the_nodes_count(
    honest_node: FakeNode, world_factory: Any, quota_backend: Any, demo_tokenizer: Any
) -> None:
    world: World = await world_factory(honest_node.url)
    await _with_artifact(world)
    snap = await registry.snapshot_fresh()
    route = snap.models["demo-llama"]
    from gateway.protocol import parse_body
    from wire.context import SignedContext

    parsed = parse_body(orjson.dumps(CHAT), chat=True)
    counted = await prompt_counter.count(snap, route, parsed, SignedContext(world.tenant.id, world.key.id, ""))
    response = await post(AsyncClient(), world, CHAT)
    assert counted.tokens == orjson.loads(response.content)["usage"]["prompt_tokens"]
    assert counted.context_length == 1024
