"""The embeddings request as the gateway checks it (the wire's one model) agrees with the API's
document, and the document's response is OpenAI's `CreateEmbeddingResponse`."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.create_embedding_response import Usage

from gateway.embeddings import embedding_parse
from gateway.openapi import v1_document
from gateway.protocol import APIError

DOC = v1_document()


def _valid(name: str, value: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _gateway_takes(body: dict[str, Any]) -> bool:
    try:
        embedding_parse(orjson.dumps(body))
    except APIError as exc:
        assert exc.status == 400 and exc.param, exc.message
        return False
    return True


CASES: list[dict[str, Any]] = [
    {"model": "m", "input": "hello"},
    {"model": "m", "input": ["a", "b"]},
    {"model": "m", "input": [1, 2, 3]},
    {"model": "m", "input": [[1, 2], [3]]},
    {"model": "m", "input": "x", "encoding_format": "base64", "dimensions": 384, "user": "u"},
    {"model": "m", "input": "x", "encoding_format": None, "dimensions": None, "user": None, "metadata": None},
    {"model": "m", "input": "x", "safety_identifier": "s", "metadata": {"team": "search"}},
    {"model": "m", "input": ""},
    {"model": "m", "input": []},
    {"model": "m", "input": [""]},
    {"model": "m", "input": [[]]},
    {"model": "m", "input": [-1]},
    {"model": "m", "input": [True]},
    {"model": "m", "input": ["a"] * 2049},
    {"model": "m", "input": "x", "encoding_format": "int8"},
    {"model": "m", "input": "x", "dimensions": 0},
    {"model": "m", "input": "x", "dimensions": "384"},
    {"model": "m", "input": "x", "metadata": {"k": 1}},
    {"model": "m", "input": "x", "metadata": {"": "v"}},
    {"model": "m", "input": "x", "metadata": {"k" * 65: "v"}},
    {"model": "m", "input": "x", "metadata": {"k": "v" * 513}},
    {"model": "m", "input": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
    {"model": "m", "input": "x", "user": "u" * 257},
    {"model": "m", "input": "x", "stream": True},
    {"model": "", "input": "x"},
    {"input": "x"},
]


@pytest.mark.parametrize("body", CASES)
def test_the_document_takes_what_the_gateway_takes(body: dict[str, Any]) -> None:
    assert _gateway_takes(body) == _valid("EmbeddingRequest", body), body


def test_bad_json_and_the_forwarded_body() -> None:
    for raw in (b"", b"[1]", b"{", b'"x"'):
        with pytest.raises(APIError) as caught:
            embedding_parse(raw)
        assert caught.value.status == 400
    body, parsed = embedding_parse(b'{"model": "m", "input": "hi", "user": "u", "metadata": {"team": "a"}}')
    # Forwarded as sent: the node reads the same fields by the same model.
    assert parsed.body == {"model": "m", "input": "hi", "user": "u", "metadata": {"team": "a"}}
    assert (body.input, body.end_user(), body.tags(), parsed.stream) == (["hi"], "u", {"team": "a"}, False)


def test_the_response_schema_is_openais() -> None:
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "all-minilm-l6-v2",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    assert _valid("EmbeddingList", answer)
    CreateEmbeddingResponse.model_validate(answer)
    schema = DOC["components"]["schemas"]["EmbeddingList"]
    required = {n for n, f in CreateEmbeddingResponse.model_fields.items() if f.is_required()}
    assert required <= set(schema["required"])
    assert {n for n, f in Usage.model_fields.items() if f.is_required()} <= set(
        schema["properties"]["usage"]["required"]
    )
    assert _valid("EmbeddingList", {**answer, "data": [{**answer["data"][0], "embedding": "AAAA"}]})
    assert not _valid("EmbeddingList", {**answer, "usage": {"prompt_tokens": 3}})
