"""The `/v1/embeddings` request, validated by this one model on both planes.

`input` is a string, a list of strings, one token array or a list of token arrays (OpenAI's four
shapes); every item must be non-empty and there are at most `EMBEDDING_MAX_INPUTS` of them.
Whether an input is too long, a token id outside the vocabulary, or `dimensions` unsupported
depends on the model, so the node that serves it decides those.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from wire.attribution import Attribution, validation_invalid

EMBEDDING_MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs

EmbeddingInput = str | list[int]
_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
# What `input` takes, for the API's document (the validator below normalises it to a list).
INPUT_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": EMBEDDING_MAX_INPUTS, "items": {"type": "string", "minLength": 1}},
        _TOKENS,
        {"type": "array", "minItems": 1, "maxItems": EMBEDDING_MAX_INPUTS, "items": _TOKENS},
    ],
    "description": "A string, a list of strings, one token array or a list of token arrays.",
}


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("invalid_input", message, context)


class EmbeddingRequest(Attribution):
    # Unknown fields are refused: a typo must not pass silently.
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str = Field(min_length=1)
    input: Annotated[list[EmbeddingInput], WithJsonSchema(INPUT_JSON_SCHEMA)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[EmbeddingInput]:
        """Normalises OpenAI's four shapes to a list of inputs (a text or a token array each)."""
        if isinstance(value, str):
            if not value:
                raise _bad("must not be an empty string")
            return [value]
        if not isinstance(value, list):
            raise _bad("must be a string, a list of strings, a token array or a list of token arrays")
        if not value:
            raise _bad("must hold at least one input")
        if all(_is_token(item) for item in value):
            return [list(value)]  # one token array
        if len(value) > EMBEDDING_MAX_INPUTS:
            raise _bad("may hold at most {limit} inputs (got {count})", limit=EMBEDDING_MAX_INPUTS, count=len(value))
        inputs: list[EmbeddingInput] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                if not item:
                    raise _bad("input[{i}] must not be an empty string", i=i)
            elif isinstance(item, list):
                if not item:
                    raise _bad("input[{i}] must not be an empty token array", i=i)
                if not all(_is_token(token) for token in item):
                    raise _bad("input[{i}] must hold only non-negative integer token ids", i=i)
            else:
                raise _bad("input[{i}] must be a string or a token array (a list of integers)", i=i)
            inputs.append(item)
        if len({type(item) for item in inputs}) > 1:
            raise _bad("must not mix strings and token arrays")
        return inputs

    def base64(self) -> bool:
        return self.encoding_format == "base64"


def embedding_request_parse(body: bytes) -> EmbeddingRequest:
    """Validate a JSON body; raises `wire.protocol.RequestInvalid` naming the offending field."""
    try:
        return EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_invalid(exc) from exc


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after every input (BERT: [CLS] and [SEP]), so a client's
    token array runs exactly as the text it came from. Duck-typed: any Hugging Face tokenizer."""
    probe = "hello"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def embedding_encode(vector: Any, *, as_base64: bool) -> Any:
    """One embedding on the wire: floats, or base64 of little-endian float32 as OpenAI sends it."""
    if as_base64:
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
