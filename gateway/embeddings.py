"""`/v1/embeddings` at the gateway: the body checked by the wire's one model (`wire.embeddings`),
its tokens counted for the quota reservation, and the plan's input limit applied. Everything
else (key, scope, model access, quotas, routing, forwarding) is the path chat takes, in `proxy`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.conf import conf
from gateway.protocol import APIError
from gateway.registry import ModelRoute
from gateway.tokens import LocalTokenizer, prompt_counter
from tenants.types import KeyContext
from wire.embeddings import EmbeddingRequest, embedding_request_parse, special_tokens_around
from wire.prompt import text_prompt_ids
from wire.protocol import RequestInvalid

# Bigger bodies are tokenized in a worker thread rather than on the event loop.
_INLINE_BYTES = 64 * 1024
# [CLS] and [SEP] (BERT) or their like: what a model adds around each input, when we cannot ask it.
_SPECIAL_TOKENS_GUESS = 2


@dataclass(slots=True)
class EmbeddingParsed:
    """The gateway's view of a checked embeddings request: what forwarding and quotas read."""

    model: str
    prompt_bytes: int
    body: dict[str, Any]  # forwarded as sent
    prompt_tokens: int | None = None  # counted by the model's tokenizer, or estimated
    stream: bool = False
    include_usage: bool = False

    def prompt_estimate(self) -> int:
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return math.ceil(self.prompt_bytes / conf().prompt_bytes_per_token)


def embedding_parse(raw: bytes) -> tuple[EmbeddingRequest, EmbeddingParsed]:
    """The validated request and the gateway's view of it (forwarded unchanged); 400 on bad input."""
    if not raw:
        raise APIError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = embedding_request_parse(raw)
    except RequestInvalid as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from None
    forwarded = orjson.loads(raw)
    prompt_bytes = sum(len(item.encode()) if isinstance(item, str) else 4 * len(item) for item in body.input)
    parsed = EmbeddingParsed(model=body.model, prompt_bytes=prompt_bytes, body=forwarded)
    return body, parsed


def _count_with(local: LocalTokenizer, body: EmbeddingRequest) -> int:
    tokenizer = local.tokenizer
    total = 0
    around: int | None = None
    for item in body.input:
        if isinstance(item, str):
            total += len(text_prompt_ids(tokenizer, item))
        else:
            if around is None:
                prefix, suffix = special_tokens_around(tokenizer)
                around = len(prefix) + len(suffix)
            total += len(item) + around
    return total


def _estimate(body: EmbeddingRequest) -> int:
    per = conf().prompt_bytes_per_token
    total = 0
    for item in body.input:
        total += math.ceil(len(item.encode()) / per) if isinstance(item, str) else len(item)
        total += _SPECIAL_TOKENS_GUESS
    return total


async def embedding_tokens(route: ModelRoute, body: EmbeddingRequest, prompt_bytes: int) -> int:
    """The inputs' tokens as the model counts them (the most any of its versions makes of them),
    by the version's own tokenizer when the control plane has it, else an estimate from the size."""
    counts: list[int] = []
    for version in route.versions:
        local = await prompt_counter.local(version)
        if local is None:
            continue
        if prompt_bytes > _INLINE_BYTES:
            counts.append(await asyncio.to_thread(_count_with, local, body))
        else:
            counts.append(_count_with(local, body))
    return max(counts) if counts else _estimate(body)


def embedding_limits_check(parsed: EmbeddingParsed, ctx: KeyContext) -> None:
    """The plan's prompt limit holds for an embeddings request's inputs together."""
    limit = ctx.key_limits.max_prompt_tokens
    tokens = parsed.prompt_estimate()
    if limit is not None and tokens > limit:
        raise APIError(
            400,
            f"The input is too long: {tokens} tokens (this plan allows {limit}).",
            param="input",
            code="context_length_exceeded",
        )
