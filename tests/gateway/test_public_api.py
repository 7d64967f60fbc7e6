"""The /v1 API through Django's ASGI stack against a fake node on a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from gateway import quota
from tests.gateway.conftest import World
from tests.gateway.fakenode import PROMPT_TOKENS, FakeNode

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def post(client: AsyncClient, world: World, body: Any, path: str = "/v1/chat/completions", **headers: str) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(path, data=raw, content_type="application/json", headers={**world.auth, **headers})


def error_of(response: Any) -> dict[str, Any]:
    body = orjson.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def read_stream(response: Any) -> bytes:
    return b"".join([chunk async for chunk in response.streaming_content])


# --- the happy path ------------------------------------------------------------------------------
async def test_chat_completion_is_forwarded_with_signed_context(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url, limits={"requests_per_minute": 100, "scheduling_weight": 3})
    client = AsyncClient()
    response = await post(client, world, CHAT, **{"x-request-id": "req-abc-123"})
    assert response.status_code == 200, response.content
    body = orjson.loads(response.content)
    assert body["choices"][0]["message"]["content"] == "Hello from the fake"
    assert body["usage"]["completion_tokens"] == 4
    assert response["x-request-id"] == "req-abc-123"
    assert response["x-ratelimit-limit-requests"] == "100"
    assert response["x-ratelimit-remaining-requests"] == "99"
    assert response["x-mmorch-model-version"] == "v1"
    [seen] = fake_node.seen
    # The node verified the signature; the context names tenant, key, weight, version, request id.
    assert seen.headers["x-mmorch-tenant"] == str(world.tenant.id)
    assert seen.headers["x-mmorch-key"] == str(world.key.id)
    assert seen.headers["x-mmorch-weight"] == "3"
    assert seen.headers["x-mmorch-model-version"] == "v1"
    # The client's id travels beside the attempt's own id (what the journal and the ledger key on).
    assert seen.headers["x-mmorch-client-request-id"] == "req-abc-123"
    assert seen.headers["x-request-id"] == response["x-mmorch-attempt-id"] != "req-abc-123"
    assert seen.body["messages"] == CHAT["messages"]


async def test_key_use_is_recorded(fake_node: FakeNode, world_factory: Any, quota_backend: Any, settings: Any) -> None:
    settings.GATEWAY_MARK_KEYS_USED = True
    world: World = await world_factory(fake_node.url)
    assert (await post(AsyncClient(), world, CHAT)).status_code == 200
    from tenants.keyuse import key_marks_flush
    from tenants.models import APIKey

    await sync_to_async(key_marks_flush)()  # what beat runs
    key = await APIKey.objects.aget(pk=world.key.pk)
    assert key.last_used_at is not None


async def test_quota_store_down_fails_closed(fake_node: FakeNode, world_factory: Any) -> None:
    quota.backend_set(quota.RedisQuota("redis://127.0.0.1:1/0"))  # nothing listens there
    world: World = await world_factory(fake_node.url)
    response = await post(AsyncClient(), world, CHAT)
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    assert fake_node.seen == []


async def test_completions_endpoint(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)
    response = await post(
        AsyncClient(), world, {"model": "demo-llama", "prompt": "Once", "max_tokens": 2}, "/v1/completions"
    )
    assert response.status_code == 200
    assert orjson.loads(response.content)["choices"][0]["text"] == "Hello from"
    assert fake_node.seen[0].path == "/v1/completions"


async def test_tokens_settle_to_the_real_usage(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url, limits={"tokens_per_minute": 1_000})
    response = await post(AsyncClient(), world, {**CHAT, "max_tokens": 500})
    assert response.status_code == 200
    # Reserved 500 + the prompt estimate (1 + 4 per message) at admission...
    assert response["x-ratelimit-remaining-tokens"] == "495"
    await asyncio.sleep(0.05)  # settling runs right after the response
    peek = await quota_backend.peek(quota.subjects_for(await key_context(world)))
    # ...and settled to what the node reported: 7 prompt + 6 completion tokens.
    # (The bucket also drains at 1000/min, about 17 tokens a second, hence the small slack.)
    used = PROMPT_TOKENS + 6
    assert 1_000 - used <= peek.remaining_tokens <= 1_000 - used + 5


async def key_context(world: World) -> Any:
    from tenants.services import akey_authenticate

    ctx = await akey_authenticate(world.raw)
    assert ctx is not None
    return ctx


async def test_streaming_passes_chunks_and_strips_usage(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url)
    response = await post(AsyncClient(), world, {**CHAT, "stream": True})
    assert response.status_code == 200
    assert response["content-type"].startswith("text/event-stream")
    raw = await read_stream(response)
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Hello from the fake"
    assert all("usage" not in c for c in chunks)  # the client did not ask for usage
    # The gateway asked the node for usage anyway (it settles the quotas with it).
    assert fake_node.seen[0].body["stream_options"] == {"include_usage": True}


async def test_streaming_keeps_usage_when_asked(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    raw = await read_stream(await post(AsyncClient(), world, body))
    chunks = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


async def test_models_lists_exactly_the_allowed_models(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url)
    other: World = await world_factory(fake_node.url, model_name="secret-model")  # granted to another tenant only
    response = await AsyncClient().get("/v1/models", headers=world.auth)
    assert response.status_code == 200
    ids = [m["id"] for m in orjson.loads(response.content)["data"]]
    assert ids == ["demo-llama"]
    response = await AsyncClient().get("/v1/models", headers=other.auth)
    assert [m["id"] for m in orjson.loads(response.content)["data"]] == ["secret-model"]
    detail = await AsyncClient().get("/v1/models/demo-llama", headers=world.auth)
    assert orjson.loads(detail.content)["id"] == "demo-llama"


async def test_key_allow_list_narrows_models(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    await world_factory(fake_node.url, model_name="other-model")
    world: World = await world_factory(fake_node.url, allowed_models=("other-model",))
    response = await post(AsyncClient(), world, CHAT)
    missing = await post(AsyncClient(), world, {**CHAT, "model": "no-such-model"})
    assert response.status_code == missing.status_code == 404
    assert error_of(response)["code"] == "model_not_found" and error_of(response)["param"] == "model"
    assert error_of(response)["message"] == error_of(missing)["message"].replace("no-such-model", "demo-llama")
    listed = await AsyncClient().get("/v1/models", headers=world.auth)
    assert orjson.loads(listed.content)["data"] == []  # other-model is not granted to this tenant
    assert fake_node.seen == []


async def test_cross_tenant_model_is_refused(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    mine: World = await world_factory(fake_node.url)
    await world_factory(fake_node.url, model_name="b-private")
    response = await post(AsyncClient(), mine, {**CHAT, "model": "b-private"})
    missing = await post(AsyncClient(), mine, {**CHAT, "model": "b-missing"})
    assert response.status_code == missing.status_code == 404
    err = error_of(response)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert err == {**error_of(missing), "message": error_of(missing)["message"].replace("b-missing", "b-private")}
    detail = await AsyncClient().get("/v1/models/b-private", headers=mine.auth)
    detail_missing = await AsyncClient().get("/v1/models/b-missing", headers=mine.auth)
    assert detail.status_code == detail_missing.status_code == 404
    assert error_of(detail)["code"] == "model_not_found"
    assert fake_node.seen == []


# --- authentication --------------------------------------------------------------------------------
async def test_missing_and_wrong_keys(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)
    client = AsyncClient()
    no_key = await client.post("/v1/chat/completions", data=orjson.dumps(CHAT), content_type="application/json")
    assert no_key.status_code == 401 and error_of(no_key)["code"] == "invalid_api_key"
    bad = await post(client, world, CHAT, authorization="Bearer sk-not-a-real-key-000000000000")
    assert bad.status_code == 401 and error_of(bad)["code"] == "invalid_api_key"
    models = await client.get("/v1/models")
    assert models.status_code == 401
    assert fake_node.seen == []


async def test_key_without_inference_scope(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)

    def admin_key() -> str:
        from tests import factories

        return factories.admin_key(world.tenant)[1]

    raw = await sync_to_async(admin_key)()
    response = await post(AsyncClient(), world, CHAT, authorization=f"Bearer {raw}")
    assert response.status_code == 403 and error_of(response)["code"] == "permission_denied"


async def test_suspended_tenant_is_refused(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)
    assert (await post(AsyncClient(), world, CHAT)).status_code == 200

    def suspend() -> None:
        from tenants.services import tenant_suspend
        from tests import factories

        tenant_suspend(tenant=world.tenant, actor=factories.SYSTEM)

    await sync_to_async(suspend)()
    response = await post(AsyncClient(), world, CHAT)
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    assert "suspended" in error_of(response)["message"]
    assert len(fake_node.seen) == 1


# --- bad input: a precise 4xx, nothing forwarded, nothing billed -------------------------------------
BAD_BODIES: list[tuple[bytes | dict[str, Any], int, str | None, str | None]] = [
    (b"{not json", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, "invalid_json"),
    (b"", 400, None, "invalid_json"),
    ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_required_parameter"),
    ({**CHAT, "model": 5}, 400, "model", "invalid_type"),
    ({**CHAT, "model": "no-such-model"}, 404, "model", "model_not_found"),
    ({"model": "demo-llama"}, 400, "messages", "missing_required_parameter"),
    ({**CHAT, "messages": "hi"}, 400, "messages", "invalid_type"),
    ({**CHAT, "messages": []}, 400, "messages", "invalid_value"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ({**CHAT, "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", "invalid_type"),
    ({**CHAT, "max_tokens": "10"}, 400, "max_tokens", "invalid_type"),
    ({**CHAT, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({**CHAT, "max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ({**CHAT, "temperature": "hot"}, 400, "temperature", "invalid_type"),
    ({**CHAT, "temperature": 9}, 400, "temperature", "invalid_value"),
    ({**CHAT, "stream": "yes"}, 400, "stream", "invalid_type"),
    ({**CHAT, "n": 9}, 400, "n", "invalid_value"),  # above the plan's cap (GATEWAY_MAX_N, 8)
    ({**CHAT, "n": 0}, 400, "n", "invalid_value"),
    ({**CHAT, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs", "invalid_value"),
    ({**CHAT, "top_logprobs": 2}, 400, "top_logprobs", "invalid_value"),  # needs logprobs: true
    ({**CHAT, "logprobs": 1}, 400, "logprobs", "invalid_type"),
    ({**CHAT, "logit_bias": {"abc": 5}}, 400, "logit_bias", "invalid_value"),
    ({**CHAT, "logit_bias": {"5": 101}}, 400, "logit_bias", "invalid_value"),
    ({**CHAT, "logit_bias": {"5": "high"}}, 400, "logit_bias", "invalid_type"),
    ({**CHAT, "presence_penalty": 2.5}, 400, "presence_penalty", "invalid_value"),
    ({**CHAT, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", "invalid_value"),
    ({**CHAT, "metadata": {"k" * 65: "v"}}, 400, "metadata", "invalid_value"),
    ({**CHAT, "metadata": {"team": "v" * 513}}, 400, "metadata", "invalid_value"),
    ({**CHAT, "metadata": {"team": 5}}, 400, "metadata.team", "invalid_type"),
    ({**CHAT, "user": 3}, 400, "user", "invalid_type"),
    ({**CHAT, "safety_identifier": "x" * 65}, 400, "safety_identifier", "invalid_value"),
    ({**CHAT, "audio": {"voice": "alloy", "format": "mp3"}}, 400, "audio", "unsupported_parameter"),
    ({**CHAT, "store": True}, 400, "store", "unsupported_parameter"),
    ({**CHAT, "tool_choice": "required"}, 400, "tool_choice", "invalid_value"),
    ({**CHAT, "frobnicate": 1}, 400, "frobnicate", "unknown_parameter"),
    (
        {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages[0].content[0].type",
        "unsupported_content",
    ),
    (
        {**CHAT, "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages[0].tool_call_id",
        "missing_required_parameter",
    ),
    ({**CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options", "invalid_value"),
    ({**CHAT, "stop": [1]}, 400, "stop", "invalid_type"),
]


async def test_bad_input_is_refused_before_anything_happens(fake_node: FakeNode, world_factory: Any) -> None:
    quota.backend_set(quota.MemoryQuota())
    world: World = await world_factory(fake_node.url, limits={"requests_per_minute": 10, "tokens_per_minute": 10_000})
    client = AsyncClient()
    for body, status, param, code in BAD_BODIES:
        response = await post(client, world, body)
        case = f"{body!r} -> {response.content!r}"
        assert response.status_code == status, case
        err = error_of(response)
        assert (err["param"], err["code"]) == (param, code), case
        assert err["message"], case
        # Nothing billed: every request and token is still there (errors carry the headers too).
        assert response["x-ratelimit-remaining-requests"] == "10", case
        assert response["x-ratelimit-remaining-tokens"] == "10000", case
    assert fake_node.seen == []  # nothing forwarded


async def test_oversized_body_is_413(
    fake_node: FakeNode, world_factory: Any, settings: Any, quota_backend: Any
) -> None:
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    world: World = await world_factory(fake_node.url)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = await post(AsyncClient(), world, big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert fake_node.seen == []


async def test_plan_input_limits(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(
        fake_node.url, limits={"max_messages": 2, "max_output_tokens": 50, "max_prompt_tokens": 100}
    )
    client = AsyncClient()
    many = {**CHAT, "messages": [{"role": "user", "content": "x"}] * 3}
    response = await post(client, world, many)
    assert response.status_code == 400 and error_of(response)["code"] == "too_many_messages"
    response = await post(client, world, {**CHAT, "max_tokens": 51})
    assert response.status_code == 400 and error_of(response)["param"] == "max_tokens"
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 200}]}
    response = await post(client, world, long)
    assert response.status_code == 400 and error_of(response)["code"] == "context_length_exceeded"
    assert fake_node.seen == []
    # Without max_tokens the plan's cap is sent to the node, so the reservation holds.
    ok = await post(client, world, {k: v for k, v in CHAT.items() if k != "max_tokens"})
    assert ok.status_code == 200
    assert fake_node.seen[0].body["max_tokens"] == 50


async def test_the_plans_cap_on_choices(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url, limits={"max_choices": 2})
    client = AsyncClient()
    response = await post(client, world, {**CHAT, "n": 3})
    assert response.status_code == 400
    assert error_of(response)["param"] == "n" and "at most 2" in error_of(response)["message"]
    assert fake_node.seen == []  # nothing forwarded, nothing reserved or billed
    assert (await post(client, world, {**CHAT, "n": 2})).status_code == 200


async def test_wrong_method(fake_node: FakeNode, world_factory: Any, quota_backend: Any) -> None:
    world: World = await world_factory(fake_node.url)
    response = await AsyncClient().get("/v1/chat/completions", headers=world.auth)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


# --- quotas through HTTP ---------------------------------------------------------------------------
async def test_100_concurrent_requests_against_20_rpm(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url, limits={"requests_per_minute": 20})
    client = AsyncClient()
    responses = await asyncio.gather(*(post(client, world, CHAT) for _ in range(100)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20
    assert statuses.count(429) == 80
    refused = next(r for r in responses if r.status_code == 429)
    err = error_of(refused)
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert refused["retry-after"] in ("2", "3")
    assert refused["x-ratelimit-limit-requests"] == "20"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_node.seen) == 20


async def test_monthly_budget_gives_insufficient_quota(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url, limits={"monthly_token_budget": 60})
    client = AsyncClient()
    statuses = []
    for _ in range(8):
        statuses.append((await post(client, world, CHAT)).status_code)
        await asyncio.sleep(0.02)  # let the settlement land
    assert statuses[0] == 200
    assert statuses[-1] == 429
    refused = await post(client, world, CHAT)
    err = error_of(refused)
    assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
    assert "retry-after" in refused


async def asgi_stream_then_disconnect(
    world: World, body: dict[str, Any], got_chunk: asyncio.Event, hang_up: asyncio.Event
) -> list[dict[str, Any]]:
    """Drive the gateway's ASGI lane like a server: read the first chunk, then hang up when told."""
    from gateway.asgi import GatewayASGIHandler

    raw = orjson.dumps(body)
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await got_chunk.wait()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and b"Hello" in message.get("body", b""):
            got_chunk.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", world.auth["authorization"].encode()),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(GatewayASGIHandler()(scope, receive, send), timeout=10)
    return sent


async def test_concurrency_cap_and_client_disconnect(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    fake_node.mode = "hang_stream"  # sends one chunk, then stalls
    world: World = await world_factory(fake_node.url, limits={"max_concurrent_requests": 1})
    client = AsyncClient()
    got_chunk, hang_up = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(asgi_stream_then_disconnect(world, {**CHAT, "stream": True}, got_chunk, hang_up))
    # The first chunk reached the client while the node still generates: nothing is buffered.
    await asyncio.wait_for(got_chunk.wait(), timeout=5)
    assert not holder.done()
    # While the first request streams, the cap of 1 refuses a second.
    second = await post(client, world, CHAT)
    assert second.status_code == 429
    assert error_of(second)["code"] == "rate_limit_exceeded"
    assert second["retry-after"] == "1"
    hang_up.set()
    sent = await holder
    assert sent[0]["status"] == 200
    # The client hung up mid-stream: the gateway closed the upstream request...
    for _ in range(100):
        if fake_node.aborted:
            break
        await asyncio.sleep(0.01)
    assert fake_node.aborted == 1
    # ...and released the concurrency slot.
    await asyncio.sleep(0.05)
    fake_node.mode = "ok"
    third = await post(client, world, CHAT)
    assert third.status_code == 200


# --- routing failures ------------------------------------------------------------------------------
async def test_failover_to_another_node_then_503(world_factory: Any, quota_backend: Any, settings: Any) -> None:
    secret = settings.INFERENCE_SHARED_SECRET.split(",")[0]
    broken = await FakeNode(secret=secret, mode="error500").start()
    healthy = await FakeNode(secret=secret).start()
    try:
        # Slow refill (6 requests, 600 tokens a minute) so what is left shows what was given back.
        world: World = await world_factory(broken.url, limits={"requests_per_minute": 6, "tokens_per_minute": 600})

        def second_node() -> None:
            from gateway import services
            from tests import factories

            services.node_register(
                name="node-b", base_url=healthy.url, versions=[world.version], state="up", actor=factories.SYSTEM
            )

        await sync_to_async(second_node)()
        client = AsyncClient()
        for _ in range(4):
            response = await post(client, world, CHAT)
            assert response.status_code == 200
        assert len(healthy.seen) == 4
        # One request's 5xx never takes a node away; the breaker opens after 3 distinct requests.
        assert len(broken.seen) <= settings.GATEWAY_NODE_BREAKER_FAILURES
        await healthy.stop()
        from gateway.registry import registry

        registry.breakers.reset()
        response = await post(client, world, {**CHAT, "max_tokens": 300})
        assert response.status_code == 503
        err = error_of(response)
        assert err["code"] == "service_unavailable"
        # At admission the request and about 305 tokens were taken...
        assert response["x-ratelimit-remaining-requests"] == "1"
        assert int(response["x-ratelimit-remaining-tokens"]) < 300
        await asyncio.sleep(0.05)
        # ...and given back: nothing billed. 4 x 11 tokens were really used.
        peek = await AsyncClient().get("/v1/models", headers=world.auth)
        assert peek["x-ratelimit-remaining-requests"] == "2"
        assert int(peek["x-ratelimit-remaining-tokens"]) >= 600 - 4 * (PROMPT_TOKENS + 4)
    finally:
        from gateway import forward

        await forward.upstream_client_close()
        await broken.stop()
        await healthy.stop()


# --- attempts, poison requests and throttling ------------------------------------------------------
async def test_a_reused_request_id_gives_every_attempt_its_own_id(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url)
    client = AsyncClient()
    for _ in range(5):
        response = await post(client, world, CHAT, **{"x-request-id": "same-id"})
        assert response.status_code == 200
        assert response["x-request-id"] == "same-id"  # the client's id is still echoed
    attempts = [seen.headers["x-request-id"] for seen in fake_node.seen]
    assert len(set(attempts)) == 5 and "same-id" not in attempts
    assert all(len(a) == 36 and a[14] == "7" for a in attempts)  # UUIDv7: sortable by time
    assert attempts == sorted(attempts)
    assert {seen.headers["x-mmorch-client-request-id"] for seen in fake_node.seen} == {"same-id"}


async def _two_nodes(world_factory: Any, settings: Any, first: str, second: str) -> tuple[World, FakeNode, FakeNode]:
    secret = settings.INFERENCE_SHARED_SECRET.split(",")[0]
    a = await FakeNode(secret=secret, mode=first).start()
    b = await FakeNode(secret=secret, mode=second).start()
    world: World = await world_factory(a.url)

    def second_node() -> None:
        from gateway import services
        from tests import factories

        services.node_register(
            name="node-b", base_url=b.url, versions=[world.version], state="up", actor=factories.SYSTEM
        )

    await sync_to_async(second_node)()
    return world, a, b


async def test_a_4xx_from_the_node_is_passed_on_and_never_retried(
    world_factory: Any, quota_backend: Any, settings: Any
) -> None:
    world, a, b = await _two_nodes(world_factory, settings, "error400", "error400")
    try:
        client = AsyncClient()
        for _ in range(8):
            response = await post(client, world, CHAT)
            assert response.status_code == 400
            assert error_of(response)["param"] == "messages"
        assert len(a.seen) + len(b.seen) == 8  # each request went to exactly one node
        from gateway.registry import registry

        assert registry.breakers.state(world.node.id) == "closed"
        a.mode = b.mode = "ok"
        assert (await post(client, world, CHAT)).status_code == 200  # no throttle for client errors
    finally:
        from gateway import forward

        await forward.upstream_client_close()
        await a.stop()
        await b.stop()


async def test_poison_requests_throttle_the_tenant_not_the_nodes(
    world_factory: Any, quota_backend: Any, settings: Any
) -> None:
    settings.GATEWAY_TENANT_FAILURES_PER_MINUTE = 3
    settings.GATEWAY_NODE_FAIL_COOLDOWN_S = 60
    world, a, b = await _two_nodes(world_factory, settings, "error500", "ok")
    try:
        client = AsyncClient()
        # One node answers 5xx: requests are retried on the other, and after 3 distinct
        # requests failing in a row that node's breaker opens.
        for _ in range(30):
            assert (await post(client, world, CHAT)).status_code == 200
        from gateway.registry import registry

        assert registry.breakers.state(world.node.id) == "open"
        assert len(a.seen) == 3  # opened on the third, then skipped
        registry.breakers.reset()
        # Now every node fails this tenant's requests: 3 failures in a minute, then 429.
        b.mode = "error500"
        for _ in range(3):
            assert (await post(client, world, CHAT)).status_code == 503
        throttled = await post(client, world, CHAT)
        assert throttled.status_code == 429 and error_of(throttled)["code"] == "rate_limit_exceeded"
        assert int(throttled["retry-after"]) >= 1
        # The nodes were never opened by these: they failed everywhere, so the request was the cause.
        assert registry.breakers.usable(world.node.id)
    finally:
        from gateway import forward

        await forward.upstream_client_close()
        await a.stop()
        await b.stop()


# --- never HTML -------------------------------------------------------------------------------------
async def test_unknown_paths_and_wrong_methods_answer_the_json_error_shape(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any
) -> None:
    world: World = await world_factory(fake_node.url)
    client = AsyncClient()
    for response in (
        await client.get("/v1/no-such-thing", headers=world.auth),
        await client.post("/v1/embeddings/x", data=b"{}", content_type="application/json", headers=world.auth),
    ):
        assert response.status_code == 404 and response["content-type"] == "application/json"
        assert error_of(response)["code"] == "unknown_url"
    wrong = await client.get("/v1/chat/completions", headers=world.auth)
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"
    wrong = await client.post("/v1/models", data=b"{}", content_type="application/json", headers=world.auth)
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "method_not_allowed"


async def test_a_database_outage_is_a_503_json_error_with_retry_after(
    fake_node: FakeNode, world_factory: Any, quota_backend: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from django.db.utils import OperationalError

    from gateway import access
    from gateway import registry as registry_module
    from gateway.registry import registry

    world: World = await world_factory(fake_node.url)

    async def key_lookup_fails(raw: str) -> Any:
        raise OperationalError("connection refused")

    def load_fails() -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(access, "akey_check", key_lookup_fails)
    client = AsyncClient()
    for _ in range(3):
        for response in (await post(client, world, CHAT), await client.get("/v1/models", headers=world.auth)):
            assert response.status_code == 503, response.content
            assert error_of(response)["code"] == "service_unavailable"
            assert int(response["retry-after"]) >= 1
    assert sum("database is unreachable" in r.getMessage() for r in caplog.records) == 1  # once per outage
    monkeypatch.undo()
    # A cached key, but no routing snapshot and the registry cannot be read either.
    registry.invalidate()
    monkeypatch.setattr(registry_module, "snapshot_load", load_fails)
    response = await post(client, world, CHAT)
    assert response.status_code == 503 and error_of(response)["code"] == "service_unavailable"
    monkeypatch.undo()
    assert (await post(client, world, CHAT)).status_code == 200
