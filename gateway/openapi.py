"""The OpenAPI 3.1 document of the public API (`/v1`), built from code so it cannot drift.

Request bodies are the wire models (`wire.protocol`) that the gateway and the node both validate
with; unknown fields are refused, so every request schema says `additionalProperties: false`.
Responses follow what the node sends, with every field the OpenAI types require.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic import BaseModel

from gateway.conf import conf
from gateway.openapi_embeddings import embeddings_document_add
from wire.protocol import ChatCompletionRequest, CompletionRequest

_REF = "#/components/schemas/{model}"


def _request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs lifted out, `n` capped at the plan's limit."""
    schema = model.model_json_schema(ref_template=_REF, by_alias=True)
    schema.pop("$defs", None)
    n = schema["properties"]["n"]
    for option in n.get("anyOf", [n]):
        if option.get("type") == "integer":
            option["maximum"] = conf().max_n
    return schema


def _defs() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (ChatCompletionRequest, CompletionRequest):
        out.update(model.model_json_schema(ref_template=_REF, by_alias=True).get("$defs", {}))
    return out


_NULLABLE_STR = {"type": ["string", "null"]}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
        "prompt_tokens_details": _COUNTS,
        "completion_tokens_details": _COUNTS,
    },
}
_FINISH = {"type": "string", "enum": ["stop", "length", "tool_calls"]}
# Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs"}], "refusal"}; completions: parallel
# lists {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. Null unless asked for.
_LOGPROBS = {"type": ["object", "null"]}
_TOOL_CALLS = {"type": "array", "items": {"type": "object"}}


def _completion_object(object_name: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": object_name},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "system_fingerprint": _NULLABLE_STR,
            "choices": {"type": "array", "items": choice},
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    }


_RESPONSE_SCHEMAS: dict[str, Any] = {
    "Usage": _USAGE,
    "ChatCompletion": _completion_object(
        "chat.completion",
        {
            "type": "object",
            "required": ["index", "message", "finish_reason"],
            "properties": {
                "index": {"type": "integer"},
                "message": {
                    "type": "object",
                    "required": ["role", "content", "refusal"],
                    "properties": {
                        "role": {"const": "assistant"},
                        "content": _NULLABLE_STR,
                        "refusal": _NULLABLE_STR,
                        "tool_calls": _TOOL_CALLS,
                    },
                },
                "logprobs": _LOGPROBS,
                "finish_reason": _FINISH,
            },
        },
    ),
    "Completion": _completion_object(
        "text_completion",
        {
            "type": "object",
            "required": ["index", "text", "finish_reason"],
            "properties": {
                "index": {"type": "integer"},
                "text": {"type": "string"},
                "logprobs": _LOGPROBS,
                "finish_reason": _FINISH,
            },
        },
    ),
    "ChatCompletionChunk": {
        **_completion_object(
            "chat.completion.chunk",
            {
                "type": "object",
                "required": ["index", "delta", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "delta": {
                        "type": "object",
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": _NULLABLE_STR,
                            "refusal": _NULLABLE_STR,
                            "tool_calls": _TOOL_CALLS,
                        },
                    },
                    "logprobs": _LOGPROBS,
                    "finish_reason": {"anyOf": [_FINISH, {"type": "null"}]},
                },
            },
        ),
        "description": "One `data:` event of a chat stream; the last one before `data: [DONE]` carries "
        "`usage` (and no choices) when `stream_options.include_usage` is true.",
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STR,
                    "code": _NULLABLE_STR,
                },
            }
        },
    },
}

_RATE_HEADERS = {
    f"x-ratelimit-{what}-{unit}": {
        "description": description.format(unit=unit),
        "schema": {"type": "string"} if what == "reset" else {"type": "integer"},
    }
    for unit in ("requests", "tokens")
    for what, description in (
        ("limit", "The per-minute {unit} limit (absent when the plan has none)."),
        ("remaining", "The {unit} left in this minute."),
        ("reset", "When the {unit} window refills, e.g. `1.5s`."),
    )
}
_SERVED_HEADERS = {
    **_RATE_HEADERS,
    "x-mmorch-model-version": {"description": "The model version that served it.", "schema": {"type": "string"}},
    "x-mmorch-attempt-id": {"description": "This attempt's id (usage is keyed on it).", "schema": {"type": "string"}},
    "x-request-id": {"description": "The client's id, or one made here.", "schema": {"type": "string"}},
    "openai-processing-ms": {
        "description": "Milliseconds from the request's arrival to the response headers.",
        "schema": {"type": "integer"},
    },
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "required": True, "schema": {"type": "integer"}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        out["headers"] = headers
    return out


def _json(ref: str, description: str, headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_ERRORS: dict[str, Any] = {
    "401": _error("`invalid_api_key`: no key, or not a valid one."),
    "403": _error("`permission_denied`: the key lacks the `inference` scope, or the tenant is suspended."),
    "404": _error("`model_not_found`: no such model, or not one this tenant or key may use."),
    "429": _error(
        "`rate_limit_exceeded` or `insufficient_quota`.",
        {"retry-after": _RETRY_AFTER, **_RATE_HEADERS},
    ),
    "503": _error(
        "`service_unavailable`: no healthy node can take the request, or a store is down (nothing billed).",
        {"retry-after": _RETRY_AFTER},
    ),
}
_GENERATE_ERRORS: dict[str, Any] = {
    "400": _error("`invalid_request_error`: the body is not one this API takes (`param` names the field)."),
    **_ERRORS,
    "413": _error("`request_too_large`: the body is over the size limit."),
    "502": _error("`bad_gateway`: the node failed while answering."),
}


def _sse_event(chunk_ref: str) -> dict[str, Any]:
    chunk = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": f"#/components/schemas/{chunk_ref}"},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string"},
            "id": {"type": "string"},
            "data": {"anyOf": [{"const": "[DONE]"}, chunk]},
        },
    }


def _generate(summary: str, op_id: str, body_ref: str, ref: str, chunk_ref: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": op_id,
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body_ref}"}}},
            },
            "responses": {
                "200": {
                    "description": "The answer; with `stream: true` a server-sent event stream of "
                    f"`{chunk_ref}` objects ending with `data: [DONE]`.",
                    "headers": _SERVED_HEADERS,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}},
                        # Open API 3.1: the schema of one event (`data` is the chunk's JSON, or [DONE]).
                        "text/event-stream": {"schema": _sse_event(chunk_ref)},
                    },
                },
                **_GENERATE_ERRORS,
            },
        }
    }


@cache
def _document() -> dict[str, Any]:
    schemas = {
        **_defs(),
        "ChatCompletionRequest": _request_schema(ChatCompletionRequest),
        "CompletionRequest": _request_schema(CompletionRequest),
        **_RESPONSE_SCHEMAS,
    }
    # A completions stream's events have the completion's own shape.
    schemas["CompletionChunk"] = {**copy.deepcopy(_RESPONSE_SCHEMAS["Completion"]), "description": "One `data:` event."}
    model_param = {"name": "model", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mm-orch inference API",
            "version": "1",
            "description": "OpenAI-compatible. Every error is "
            '`{"error": {"message", "type", "param", "code"}}`.',
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": _generate(
                "Create a chat completion", "chat_completions_create", "ChatCompletionRequest", "ChatCompletion",
                "ChatCompletionChunk",
            ),
            "/v1/completions": _generate(
                "Create a completion", "completions_create", "CompletionRequest", "Completion", "CompletionChunk"
            ),
            "/v1/models": {
                "get": {
                    "operationId": "models_list",
                    "summary": "The models this key may use",
                    "responses": {"200": _json("ModelList", "The models.", _RATE_HEADERS), **_ERRORS},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "models_retrieve",
                    "summary": "One model",
                    "parameters": [model_param],
                    "responses": {"200": _json("Model", "The model.", _RATE_HEADERS), **_ERRORS},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An inference key, `sk-...`."}
            },
        },
    }  # fmt: skip


def v1_document() -> dict[str, Any]:
    """The document (a fresh copy: callers may not change the cached one)."""
    doc = copy.deepcopy(_document())
    embeddings_document_add(doc, errors=copy.deepcopy(_GENERATE_ERRORS), headers=copy.deepcopy(_SERVED_HEADERS))
    return doc
