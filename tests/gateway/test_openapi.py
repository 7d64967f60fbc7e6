"""The /v1 OpenAPI document: served without a key, valid, and saying exactly what the gateway takes."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
import schemathesis
from django.test import AsyncClient
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ValidationError

from gateway.openapi import v1_document
from gateway.protocol import APIError, parse_body
from wire.protocol import ROLES, ChatCompletionRequest, CompletionRequest

DOC = v1_document()
SCHEMAS = DOC["components"]["schemas"]
MSG = [{"role": "user", "content": "hi"}]


def _valid(name: str, value: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _gateway_takes(body: dict[str, Any], *, chat: bool) -> bool:
    try:
        parse_body(orjson.dumps(body), chat=chat)
    except APIError:
        return False
    return True


@pytest.mark.django_db
async def test_served_without_a_key() -> None:
    response = await AsyncClient().get("/v1/openapi.json")
    assert response.status_code == 200
    assert response["content-type"] == "application/json"
    assert orjson.loads(response.content) == DOC
    assert (await AsyncClient().post("/v1/openapi.json")).status_code == 405


def test_the_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(DOC)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"),
        ("POST", "/v1/embeddings"),
    }
    for component in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(component)
    assert DOC["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An inference key, `sk-...`.",
    }


def test_every_documented_error_has_the_envelope() -> None:
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            expected = {"401", "403", "404", "429", "503"}
            if method == "post":
                expected |= {"400", "413"}
                streams = path != "/v1/embeddings"  # embeddings answer in one piece
                assert set(responses["200"]["content"]) == {"application/json"} | (
                    {"text/event-stream"} if streams else set()
                )
            assert expected <= set(responses), (method, path)
            for status in expected:
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error"
            headers = responses["429"]["headers"]
            assert headers["retry-after"]["required"] is True
            rate = {f"x-ratelimit-{w}-{u}" for w in ("limit", "remaining", "reset") for u in ("requests", "tokens")}
            assert rate <= set(headers)
    error = SCHEMAS["Error"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]


def _fields(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_request_schemas_list_exactly_the_wire_models_parameters() -> None:
    chat, completion = SCHEMAS["ChatCompletionRequest"], SCHEMAS["CompletionRequest"]
    assert set(chat["properties"]) == _fields(ChatCompletionRequest)
    assert set(completion["properties"]) == _fields(CompletionRequest)
    messages = [SCHEMAS[name] for name in ("SystemMessage", "UserMessage", "AssistantMessage", "ToolMessage")]
    for schema in (chat, completion, SCHEMAS["StreamOptions"], *messages):
        assert schema["additionalProperties"] is False
    roles = set()
    for schema in messages:
        role = schema["properties"]["role"]
        roles |= set(role.get("enum") or [role.get("const")])
    assert roles == ROLES
    assert {"logprobs", "top_logprobs", "logit_bias", "metadata", "user", "tools", "response_format"} <= set(
        chat["properties"]
    )
    assert {"echo", "logprobs", "best_of"} <= set(completion["properties"])
    assert set(chat["required"]) == {"model", "messages"}
    assert set(completion["required"]) == {"model", "prompt"}


CHAT_CASES: list[dict[str, Any]] = [
    {"model": "m", "messages": MSG},
    {"model": "m", "messages": MSG, "stream": None},
    {"model": "m", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": MSG, "stream": True, "stream_options": {"other": True}},
    {"model": "m", "messages": MSG, "stream": 1},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    {"model": "m", "messages": [{"role": "user", "content": None}]},
    {"model": "m", "messages": [{"role": "user"}]},
    {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "name": 5}]},
    {"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]},
    {"model": "m", "messages": []},
    {"model": "", "messages": MSG},
    {"messages": MSG},
    {"model": "m", "messages": MSG, "max_tokens": 0},
    {"model": "m", "messages": MSG, "max_tokens": 5, "max_completion_tokens": 5},
    {"model": "m", "messages": MSG, "max_completion_tokens": None},
    {"model": "m", "messages": MSG, "temperature": 2, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 2.0},
    {"model": "m", "messages": MSG, "temperature": 2.5},
    {"model": "m", "messages": MSG, "top_p": 0},
    {"model": "m", "messages": MSG, "presence_penalty": "1"},
    {"model": "m", "messages": MSG, "n": 1, "seed": 7, "user": "u", "stop": ["a", "b"]},
    {"model": "m", "messages": MSG, "n": 2},
    {"model": "m", "messages": MSG, "n": 8},
    {"model": "m", "messages": MSG, "n": 9},
    {"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 20},
    {"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 21},
    {"model": "m", "messages": MSG, "top_logprobs": 3},
    {"model": "m", "messages": MSG, "logprobs": False, "tools": None, "response_format": {"type": "text"}},
    {"model": "m", "messages": MSG, "logit_bias": {"5": -100, "7": 100}},
    {"model": "m", "messages": MSG, "metadata": {"team": "search"}, "user": "u1", "safety_identifier": "h"},
    {"model": "m", "messages": MSG, "audio": None, "modalities": ["text"], "store": False, "service_tier": "auto"},
    {"model": "m", "messages": MSG, "audio": {"voice": "alloy"}},
    {"model": "m", "messages": MSG, "seed": 1.5},
    {"model": "m", "messages": MSG, "user": 3},
    {"model": "m", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]},
    {"model": "m", "messages": MSG, "stop": [""]},
    {"model": "m", "messages": MSG, "stop": ""},
    {"model": "m", "messages": MSG, "tools": []},
    {"model": "m", "messages": MSG, "whatever": 1},
]
COMPLETION_CASES: list[dict[str, Any]] = [
    {"model": "m", "prompt": "hi"},
    {"model": "m", "prompt": ["hi"]},
    {"model": "m", "prompt": ["a", "b"]},
    {"model": "m", "prompt": []},
    {"model": "m", "prompt": [1, 2]},
    {"model": "m"},
    {"model": "m", "prompt": "hi", "echo": True},
    {"model": "m", "prompt": "hi", "messages": MSG},
    {"model": "m", "prompt": "hi", "max_completion_tokens": 3},
    {"model": "m", "prompt": "hi", "max_tokens": 3, "stream": False},
    {"model": "m", "prompt": "hi", "echo": True, "logprobs": 2, "n": 3, "best_of": 3},
    {"model": "m", "prompt": "hi", "logprobs": 6},
    {"model": "m", "prompt": [[1, 2, 3]]},
    {"model": "m", "prompt": "hi", "suffix": None},
    {"model": "m", "prompt": "hi", "echo": True, "max_tokens": 0, "logprobs": 0},
    {"model": "m", "prompt": "hi", "max_tokens": 0},
]


@pytest.mark.parametrize("body", CHAT_CASES)
def test_chat_schema_takes_what_the_gateway_takes(body: dict[str, Any]) -> None:
    _agree("ChatCompletionRequest", ChatCompletionRequest, body, chat=True)


@pytest.mark.parametrize("body", COMPLETION_CASES)
def test_completion_schema_takes_what_the_gateway_takes(body: dict[str, Any]) -> None:
    _agree("CompletionRequest", CompletionRequest, body, chat=False)


def _cross_field(body: dict[str, Any]) -> bool:
    """Rules the schema states in words only (validators): the gateway refuses them with a 400."""
    return (
        ("stream_options" in body and body.get("stream") is not True)
        or (
            "max_tokens" in body
            and "max_completion_tokens" in body
            and body["max_tokens"] != body["max_completion_tokens"]
        )
        or bool(body.get("top_logprobs") and not body.get("logprobs"))
        or (body.get("max_tokens") == 0 and "prompt" in body and body.get("echo") is not True)
    )


def _agree(name: str, wire_model: type[BaseModel], body: dict[str, Any], *, chat: bool) -> None:
    forwarded = dict(body)
    takes = _gateway_takes(forwarded, chat=chat)
    assert takes == (_valid(name, body) and not _cross_field(body)), body
    if takes:
        # And the node takes what the gateway forwards.
        parsed = parse_body(orjson.dumps(body), chat=chat)
        try:
            wire_model.model_validate_json(orjson.dumps(parsed.body))
        except ValidationError as exc:
            pytest.fail(f"the node refuses {parsed.body}: {exc}")


@pytest.mark.parametrize(
    ("name", "openai_type"),
    [
        ("ChatCompletion", ChatCompletion),
        ("Completion", Completion),
        ("ChatCompletionChunk", ChatCompletionChunk),
        ("CompletionChunk", Completion),
        ("Model", Model),
    ],
)
def test_response_schemas_require_what_openai_requires(name: str, openai_type: type[BaseModel]) -> None:
    def required(model: type[BaseModel]) -> set[str]:
        return {n for n, f in model.model_fields.items() if f.is_required()}

    schema = SCHEMAS[name]
    assert required(openai_type) <= set(schema["required"]), name
    if "choices" in schema["properties"]:
        choice_type = openai_type.model_fields["choices"].annotation.__args__[0]  # type: ignore[union-attr]
        choice = schema["properties"]["choices"]["items"]
        assert required(choice_type) <= set(choice["required"]), name
        if name == "ChatCompletion":
            message_type = choice_type.model_fields["message"].annotation
            assert required(message_type) <= set(choice["properties"]["message"]["required"])
    if "usage" in openai_type.model_fields:
        usage_type = openai_type.model_fields["usage"].annotation.__args__[0]  # type: ignore[union-attr]
        assert required(usage_type) <= set(SCHEMAS["Usage"]["required"])


def test_a_node_answer_matches_the_schemas() -> None:
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": "v1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    assert _valid("ChatCompletion", answer)
    ChatCompletion.model_validate(answer)
    assert not _valid("ChatCompletion", {**answer, "choices": [{"index": 0}]})


@pytest.mark.django_db
async def test_any_unknown_path_answers_the_json_404(settings: Any) -> None:
    settings.ROOT_URLCONF = "config.urls"  # the project's, whose own 404 page is HTML
    # A newline in the path (the fuzzer found it through the real ASGI app) still gets the JSON shape.
    response = await AsyncClient().get("/v1/models/\n\u00b4")
    assert response.status_code in (401, 404)
    assert response["content-type"] == "application/json"
    assert set(orjson.loads(response.content)) == {"error"}
