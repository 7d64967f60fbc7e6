"""`/v1/embeddings` in the public API's OpenAPI document: the request is the wire's one model
(`wire.embeddings.EmbeddingRequest`, unknown fields refused), the response OpenAI's
`CreateEmbeddingResponse` with `embedding` as floats or base64."""

from __future__ import annotations

from typing import Any

from wire.embeddings import EmbeddingRequest

_REF = "#/components/schemas/{model}"


def _request_schema() -> dict[str, Any]:
    schema = EmbeddingRequest.model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)
    schema["additionalProperties"] = False
    return schema


RESPONSE_SCHEMAS: dict[str, Any] = {
    "Embedding": {
        "type": "object",
        "required": ["object", "index", "embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer", "minimum": 0},
            "embedding": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "string", "description": "base64 of little-endian float32"},
                ]
            },
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Embedding"}},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}


def embeddings_document_add(doc: dict[str, Any], *, errors: dict[str, Any], headers: dict[str, Any]) -> None:
    """Adds the path and its schemas to the document (in place)."""
    doc["components"]["schemas"]["EmbeddingRequest"] = _request_schema()
    doc["components"]["schemas"].update(RESPONSE_SCHEMAS)
    doc["paths"]["/v1/embeddings"] = {
        "post": {
            "operationId": "embeddings_create",
            "summary": "Create embeddings",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingRequest"}}},
            },
            "responses": {
                "200": {
                    "description": "One embedding per input, in order; usage counts prompt tokens only.",
                    "headers": headers,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingList"}}},
                },
                **errors,
            },
        }
    }
