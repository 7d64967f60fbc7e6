"""The node's HTTP API as a real process: OpenAI compatibility, signatures, bad input, the journal API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx2
import openai
import pytest

from tests.inference.conftest import signed
from tests.support.inference_node import InferenceNode, inference_node
from wire.client import usage_pull
from wire.context import SignedContext
from wire.signing import sign_headers

SECRET = "api-test-secret"


@pytest.fixture(scope="module")
def node() -> Iterator[InferenceNode]:
    with inference_node(
        secret=SECRET, models=[("demo-llama", "v1"), ("demo-llama", "v2")], INFERENCE_MAX_TOKENS="256"
    ) as running:
        yield running


def cursor(node: InferenceNode) -> int:
    page = usage_pull(node.base_url, SECRET, after=0, limit=10000)
    return int(page["next_after"])


def records_after(node: InferenceNode, after: int) -> list[dict[str, Any]]:
    return list(usage_pull(node.base_url, SECRET, after=after, limit=10000)["records"])


async def post(node: InferenceNode, path: str, payload: Any, **ctx: Any) -> tuple[int, dict[str, str], bytes]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = signed(SECRET, path, body, **ctx)
    async with aiohttp.ClientSession() as session, session.post(node.base_url + path, data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def signing_client(node: InferenceNode, *, tenant: int = 101, model_version: str = "") -> openai.AsyncOpenAI:
    """The official client, with each request signed the way the gateway signs it."""

    async def sign(request: httpx2.Request) -> None:
        body = request.read()
        ctx = SignedContext(tenant=tenant, key=7, request_id=str(uuid.uuid4()), model_version=model_version)
        request.headers.update(sign_headers(SECRET, request.method, request.url.raw_path.decode(), body, ctx))

    http = httpx2.AsyncClient(event_hooks={"request": [sign]})
    return openai.AsyncOpenAI(api_key="unused", base_url=node.base_url + "/v1", http_client=http, max_retries=0)


async def test_openai_client_streaming_and_non_streaming_agree(node: InferenceNode) -> None:
    client = signing_client(node)
    messages = [{"role": "user", "content": "Tell me something."}]
    whole = await client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=40, temperature=0)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 40
    text = whole.choices[0].message.content or ""
    assert len(text) == 40

    stream = await client.chat.completions.create(
        model="demo-llama",
        messages=messages,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(parts) == text
    assert finish == "length"
    assert usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens and usage.completion_tokens == 40

    completion = await client.completions.create(model="demo-llama", prompt="Once", max_tokens=12, temperature=0)
    assert completion.choices[0].finish_reason == "length" and len(completion.choices[0].text) == 12
    models = await client.models.list()
    assert {(m.id, m.model_extra.get("version")) for m in models.data} == {("demo-llama", "v1"), ("demo-llama", "v2")}
    await client.close()


async def test_model_version_header_picks_the_version(node: InferenceNode) -> None:
    payload = {"model": "demo-llama", "prompt": "x", "max_tokens": 2}
    status, headers, _ = await post(node, "/v1/completions", payload, model_version="v2")
    assert (status, headers["x-mmorch-model-version"]) == (200, "v2")
    status, headers, _ = await post(node, "/v1/completions", payload)
    assert (status, headers["x-mmorch-model-version"]) == (200, "v1")
    status, _, body = await post(node, "/v1/completions", payload, model_version="v9")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


async def test_stop_sequences_over_http(node: InferenceNode) -> None:
    payload = {"model": "demo-llama", "prompt": "Stop here", "max_tokens": 60, "temperature": 0}
    _, _, body = await post(node, "/v1/completions", payload)
    full = json.loads(body)["choices"][0]["text"]
    stop = full[30:33]
    status, _, body = await post(node, "/v1/completions", {**payload, "stop": [stop]})
    answer = json.loads(body)
    assert status == 200
    assert answer["choices"][0]["text"] == full[: full.index(stop)]
    assert answer["choices"][0]["finish_reason"] == "stop"


BAD_INPUTS = [
    pytest.param(b"{not json", 400, None, "invalid_json", id="malformed-json"),
    pytest.param({"model": "demo-llama", "messages": "hi"}, 400, "messages", "invalid_type", id="messages-not-list"),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"},
        400,
        "max_tokens",
        "invalid_type",
        id="max-tokens-string",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        400,
        "max_tokens",
        "invalid_value",
        id="max-tokens-zero",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3},
        400,
        "max_tokens",
        "invalid_value",
        id="max-tokens-negative",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 257},
        400,
        "max_tokens",
        "invalid_value",
        id="max-tokens-over-limit",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "x" * 1100}]},
        400,
        "messages",
        "context_length_exceeded",
        id="prompt-too-long",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "x" * 900}], "max_tokens": 200},
        400,
        "max_tokens",
        "context_length_exceeded",
        id="prompt-plus-max-tokens-too-long",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "n": 200},
        400,
        "n",
        "invalid_value",
        id="n-above-128",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
        400,
        "temperature",
        "invalid_value",
        id="temperature-too-high",
    ),
    pytest.param(
        {"model": "demo-llama", "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages[0].role",
        "invalid_value",
        id="unknown-role",
    ),
    pytest.param(
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model",
        "model_not_found",
        id="unknown-model",
    ),
]


@pytest.mark.parametrize(("payload", "status", "param", "code"), BAD_INPUTS)
async def test_bad_input_is_a_precise_4xx_and_nothing_is_journaled(
    node: InferenceNode, payload: Any, status: int, param: str | None, code: str
) -> None:
    before = cursor(node)
    got, _, body = await post(node, "/v1/chat/completions", payload)
    error = json.loads(body)["error"]
    assert got == status
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"]
    assert records_after(node, before) == []


async def test_bad_completion_prompt_and_unknown_route(node: InferenceNode) -> None:
    status, _, body = await post(node, "/v1/completions", {"model": "demo-llama", "prompt": ["a", "b"]})
    assert status == 400 and json.loads(body)["error"]["param"] == "prompt"
    async with aiohttp.ClientSession() as session, session.get(node.base_url + "/v1/nothing") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_signatures_are_required_over_http(node: InferenceNode) -> None:
    path = "/v1/completions"
    body = json.dumps({"model": "demo-llama", "prompt": "hi", "max_tokens": 2}).encode()
    good = signed(SECRET, path, body, tenant=201)
    before = cursor(node)
    cases = {
        "missing": {"content-type": "application/json"},
        "wrong-secret": signed("not-the-secret", path, body, tenant=201),
        "stale": {
            **sign_headers(SECRET, "POST", path, body, SignedContext(201, 5, "r"), timestamp=int(time.time()) - 120),
            "content-type": "application/json",
        },
        # The same signed body replayed under another tenant's name.
        "replayed-other-tenant": {**good, "x-mmorch-tenant": "202"},
        "replayed-raised-weight": {**good, "x-mmorch-weight": "50"},
    }
    async with aiohttp.ClientSession() as session:
        for name, headers in cases.items():
            async with session.post(node.base_url + path, data=body, headers=headers) as r:
                assert r.status == 401, name
                error = (await r.json())["error"]
                assert (error["type"], error["code"]) == ("authentication_error", "invalid_signature"), name
        async with session.get(node.base_url + "/internal/usage?after=0") as r:
            assert r.status == 401
        async with session.get(node.base_url + "/v1/models") as r:
            assert r.status == 401
        async with session.post(node.base_url + path, data=body, headers=good) as r:
            assert r.status == 200
    new = records_after(node, before)
    assert [r["tenant"] for r in new] == [201]


async def test_usage_records_and_pull_is_idempotent(node: InferenceNode) -> None:
    before = cursor(node)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for rid in ids:
        payload = {"model": "demo-llama", "prompt": "hello", "max_tokens": 3}
        status, _, _ = await post(node, "/v1/completions", payload, request_id=rid, tenant=301, key=9)
        assert status == 200
    first = usage_pull(node.base_url, SECRET, after=before, limit=3)
    again = usage_pull(node.base_url, SECRET, after=before, limit=3)
    assert first == again
    assert first["has_more"] is True and len(first["records"]) == 3
    rest = usage_pull(node.base_url, SECRET, after=first["next_after"], limit=3)
    assert rest["has_more"] is False
    records = first["records"] + rest["records"]
    assert [r["request_id"] for r in records] == ids
    record = records[0]
    assert set(record) == {
        "version",
        "seq",
        "request_id",
        "client_request_id",
        "tenant",
        "key",
        "model",
        "model_version",
        "prompt_tokens",
        "completion_tokens",
        "outcome",
        "queue_ms",
        "ttft_ms",
        "duration_ms",
        "started_at",
        "finished_at",
        "end_user",
        "metadata",
        "trace_id",
        "engine_ms",
    }
    assert (record["end_user"], record["metadata"]) == ("", {})  # the client named no one
    assert (record["tenant"], record["key"], record["model"], record["model_version"]) == (
        301,
        9,
        "demo-llama",
        "v1",
    )
    assert (record["prompt_tokens"], record["completion_tokens"], record["outcome"]) == (5, 3, "length")
    # Every record carries its share of engine step time (inference/engine/accounting.py).
    assert all(r["engine_ms"] > 0 for r in records)
    assert record["version"] == 3 and record["client_request_id"] == record["request_id"]  # no client id: its own
    assert record["finished_at"].endswith("Z") and record["started_at"] <= record["finished_at"]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    async with aiohttp.ClientSession() as session:
        path = "/internal/usage?after=-1"
        async with session.get(node.base_url + path, headers=signed(SECRET, path, b"", method="GET")) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "after"


async def test_client_disconnect_aborts_and_frees_the_slot(node: InferenceNode) -> None:
    before = cursor(node)
    rid = str(uuid.uuid4())
    path = "/v1/chat/completions"
    body = json.dumps(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "go"}], "max_tokens": 256, "stream": True}
    ).encode()
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            node.base_url + path, data=body, headers=signed(SECRET, path, body, request_id=rid)
        )
        await response.content.readline()
        response.close()  # drop the connection mid-stream
    for _ in range(100):
        records = records_after(node, before)
        if records:
            break
        await asyncio.sleep(0.05)
    assert [(r["request_id"], r["outcome"]) for r in records] == [(rid, "aborted")]
    assert records[0]["completion_tokens"] < 256
    async with aiohttp.ClientSession() as session, session.get(node.base_url + "/metrics") as r:
        metrics = await r.text()
    assert 'mmorch_inference_running_requests{model="demo-llama",model_version="v1",tenant="1"} 0.0' in metrics
    assert (
        'mmorch_inference_requests_total{model="demo-llama",model_version="v1",outcome="aborted",tenant="1"}' in metrics
    )


async def test_health_ready_and_metrics(node: InferenceNode) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/health", "/ready"):
            async with session.get(node.base_url + path) as r:
                assert r.status == 200
        async with session.get(node.base_url + "/metrics") as r:
            text = await r.text()
    for name in (
        "mmorch_inference_requests_total",
        "mmorch_inference_prompt_tokens_total",
        "mmorch_inference_completion_tokens_total",
        "mmorch_inference_queue_time_seconds_bucket",
        "mmorch_inference_time_to_first_token_seconds_bucket",
        "mmorch_inference_inter_token_latency_seconds_bucket",
        "mmorch_inference_e2e_latency_seconds_bucket",
        "mmorch_inference_running_requests",
        "mmorch_inference_waiting_requests",
        'mmorch_inference_batch_size{model="demo-llama",model_version="v1"}',
    ):
        assert name in text, name


async def test_inference_client_streams_and_reports_connection_failures(node: InferenceNode) -> None:
    from tests.support.inference_node import free_port
    from wire.client import InferenceClient, probe_ready

    client = InferenceClient()
    body = json.dumps(
        {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    ).encode()
    ctx = SignedContext(tenant=401, key=5, request_id=str(uuid.uuid4()), weight=2)
    response = await client.open(node.base_url, "/v1/chat/completions", body, ctx, secret=SECRET, timeout=10)
    try:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.read()
    finally:
        response.release()
    events = [line for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    content = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1] if json.loads(e[6:])["choices"]
    )
    assert len(content) == 8
    # Keep-alive: the second request (a new attempt, so a new id) reuses the pool.
    ctx = SignedContext(tenant=401, key=5, request_id=str(uuid.uuid4()), weight=2)
    again = await client.open(node.base_url, "/v1/chat/completions", body, ctx, secret=SECRET, timeout=10)
    assert again.status == 200
    await again.read()
    again.release()
    with pytest.raises(aiohttp.ClientError):
        await client.open(
            f"http://127.0.0.1:{free_port()}", "/v1/chat/completions", body, ctx, secret=SECRET, timeout=2
        )
    await client.close()
    assert probe_ready(node.base_url) is True
    assert probe_ready(f"http://127.0.0.1:{free_port()}", timeout=0.5) is False


async def test_missing_request_id_gets_one_made_here(node: InferenceNode) -> None:
    before = cursor(node)
    path = "/v1/completions"
    body = json.dumps({"model": "demo-llama", "prompt": "x", "max_tokens": 1}).encode()
    headers = sign_headers(SECRET, "POST", path, body, SignedContext(tenant=402, key=5, request_id=""))
    async with aiohttp.ClientSession() as session, session.post(node.base_url + path, data=body, headers=headers) as r:
        assert r.status == 200
        made = r.headers["x-request-id"]
    (record,) = records_after(node, before)
    assert len(made) == 36 and record["request_id"] == made


async def test_the_same_signed_bytes_twice_are_served_once(node: InferenceNode) -> None:
    path = "/v1/completions"
    body = json.dumps({"model": "demo-llama", "prompt": "hi", "max_tokens": 2}).encode()
    headers = signed(SECRET, path, body, tenant=211)
    async with aiohttp.ClientSession() as session:
        async with session.post(node.base_url + path, data=body, headers=headers) as first:
            assert first.status == 200
        async with session.post(node.base_url + path, data=body, headers=headers) as again:
            assert again.status == 401
            assert (await again.json())["error"]["code"] == "replayed_request"
        # A signature older than the (default 15 s) window is refused as expired, replay or not.
        old = sign_headers(
            SECRET, "POST", path, body, SignedContext(211, 5, "old-attempt"), timestamp=int(time.time()) - 20
        )
        async with session.post(node.base_url + path, data=body, headers=old) as stale:
            assert stale.status == 401
            assert "stale" in (await stale.json())["error"]["message"]


async def test_a_chat_template_refusing_the_messages_is_a_400_not_a_500(node: InferenceNode) -> None:
    before = cursor(node)
    payload = {"model": "demo-llama", "messages": [{"role": "assistant", "content": "I start"}], "max_tokens": 2}
    status, _, raw = await post(node, "/v1/chat/completions", payload, tenant=212)
    assert status == 400
    error = json.loads(raw)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert "assistant" in error["message"]
    # The same refusal from the tokenize call, and a prompt longer than the context is a 400 too.
    status, _, raw = await post(node, "/v1/tokenize", payload, tenant=212)
    assert status == 400 and json.loads(raw)["error"]["param"] == "messages"
    long = {"model": "demo-llama", "prompt": "x" * 2000, "max_tokens": 2}
    status, _, raw = await post(node, "/v1/completions", long, tenant=212)
    assert status == 400 and json.loads(raw)["error"]["code"] == "context_length_exceeded"
    assert records_after(node, before) == []  # nothing reached the engine


async def test_tokenize_counts_exactly_what_generation_runs(node: InferenceNode) -> None:
    payload = {"model": "demo-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
    status, _, raw = await post(node, "/v1/tokenize", payload, tenant=213)
    assert status == 200
    counted = json.loads(raw)
    assert (counted["context_length"], counted["max_tokens"], counted["model_version"]) == (1024, 256, "v1")
    status, _, raw = await post(node, "/v1/chat/completions", payload, tenant=213)
    assert status == 200 and json.loads(raw)["usage"]["prompt_tokens"] == counted["count"]
    status, _, raw = await post(node, "/v1/tokenize", {"model": "demo-llama", "prompt": "abc"}, tenant=213)
    assert status == 200 and json.loads(raw)["count"] == 3  # one token per byte, no BOS on plain text
