"""Schema-driven fuzzing of the public API (`/v1`) with its own document (`/v1/openapi.json`).

Every operation is called with requests generated from the document, through the real ASGI
application (the gateway's lean lane) and a fake node on a loopback socket, with a tenant's
inference key and the model granted. The run fails on a 5xx other than the documented 503, on a
response the document does not declare (status, content type, headers, body) and on a request the
document calls valid that the gateway refuses with a 400. Bounded and derandomized.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.conf import settings as django_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from gateway import quota
from gateway.registry import registry
from gateway.tokens import prompt_counter
from tenants import services as tenant_services
from tests.fuzz import FUZZ
from tests.gateway.conftest import World, build_world
from tests.gateway.fakenode import FakeNode

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 25
MODEL = "fuzz-llama"
INTEGERS = ("max_tokens", "max_completion_tokens", "seed", "n", "top_logprobs", "logprobs", "best_of", "dimensions")
# Schemas inside the body (their JSON-schema validity, tool names that must match): stated in words.
IN_WORDS = ("tools", "tool_choice", "response_format", "parallel_tool_calls")


@pytest.fixture
def node() -> Iterator[FakeNode]:
    """The fake node on its own event loop in a thread (the app runs on schemathesis's loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    secret = django_settings.INFERENCE_SHARED_SECRET.split(",")[0]
    fake = asyncio.run_coroutine_threadsafe(FakeNode(secret=secret).start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def world(node: FakeNode, settings: Any) -> Iterator[World]:
    settings.GATEWAY_MARK_KEYS_USED = False
    tenant_services.key_cache_reset()
    registry.invalidate()
    registry.in_flight.clear()
    registry.breakers.reset()
    registry.tenant_throttle.reset()
    prompt_counter.reset()
    backend = quota.MemoryQuota()
    quota.backend_set(backend)
    # A per-minute budget the run uses up: the 429s are part of what is checked.
    yield build_world(node.url, model_name=MODEL, limits={"requests_per_minute": 60})
    tenant_services.key_cache_reset()
    registry.invalidate()
    quota.backend_set(None)


def _fix_up(case: Any, real: bool) -> None:
    """The granted model for a share of the cases; the cross-field rules the document states in words."""
    if real and case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = MODEL
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if real and "model" in body:
        body["model"] = MODEL
    for name in INTEGERS:
        # JSON Schema cannot tell 2.0 from 2; the gateway (and the node) take only the latter.
        value = body.get(name)
        if isinstance(value, float) and value.is_integer():
            body[name] = int(value)
    if isinstance(body.get("input"), list):
        # Token ids, as above (and nested in a list of token arrays).
        body["input"] = [
            [int(t) if isinstance(t, float) and t.is_integer() else t for t in item] if isinstance(item, list) else item
            for item in body["input"]
        ]
        body["input"] = [int(t) if isinstance(t, float) and t.is_integer() else t for t in body["input"]]
    if "stream_options" in body and body.get("stream") is not True:
        body.pop("stream_options")
    for name in IN_WORDS:
        body.pop(name, None)
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        body.pop("top_logprobs")
    if body.get("best_of") is not None and body["best_of"] != (body.get("n") or 1):
        body.pop("best_of")
    if body.get("max_tokens") == 0 and body.get("echo") is not True:
        body.pop("max_tokens")
    tokens = body.get("max_tokens"), body.get("max_completion_tokens")
    if None not in tokens and tokens[0] != tokens[1]:
        body.pop("max_completion_tokens")


def _fuzz(world: World) -> list[str]:
    from gateway.asgi import application

    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", application)
    headers = {"Authorization": f"Bearer {world.raw}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(FUZZ, max_examples=EXAMPLES)
        def run(case: Any, real: bool) -> None:
            _fix_up(case, real)
            response = case.call(headers=headers)
            # 503 is documented (no node, a store down); any other 5xx is a bug.
            assert response.status_code < 500 or response.status_code == 503, (
                f"{response.status_code}: {response.text[:500]}"
            )
            case.validate_response(response, excluded_checks=[not_a_server_error], headers=headers)

        try:
            run()
        except BaseException as exc:
            failures.append(f"{operation.method.upper()} {operation.path}:\n{exc}")
    return failures


def test_every_operation_matches_the_document(node: FakeNode, world: World) -> None:
    failures = _fuzz(world)
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
    # Happy paths ran too, not only refusals.
    assert {seen.path for seen in node.seen} == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
