"""Counting a request's prompt tokens before admission, so reservations match what is served.

The count comes from the model version's own tokenizer and chat template, loaded once per
version from its artifact when that is a local directory (off the event loop, on first use), by
the same code the node runs (`wire.prompt`). A version the control plane has no artifact for is
asked of a node (`POST /v1/tokenize`, signed). When neither works the byte estimate stands in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.forward import attempt_id_new, upstream_client
from gateway.protocol import APIError, ParsedRequest
from gateway.registry import ModelRoute, Snapshot, VersionRoute
from wire.context import SignedContext
from wire.prompt import PromptRejected, chat_prompt_ids, text_prompt_ids
from wire.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)

# Prompts larger than this are tokenized in a worker thread rather than on the event loop.
_INLINE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LocalTokenizer:
    tokenizer: Any
    context_length: int


@dataclass(frozen=True, slots=True)
class PromptCount:
    tokens: int
    context_length: int | None = None  # None when unknown
    max_tokens: int | None = None  # the node's cap on completion tokens, when it told us


def tokenizer_load(artifact: str) -> LocalTokenizer | None:
    """The tokenizer of a local model directory, or None (not local, not a model, no transformers)."""
    path = Path(artifact)
    if not artifact or not path.is_dir() or not (path / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        config: dict[str, Any] = {}
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        # As the node's engine reads it.
        context = int(config.get("max_position_embeddings") or getattr(tokenizer, "model_max_length", None) or 2048)
    except Exception:
        logger.warning("gateway: cannot load the tokenizer of %s; nodes will count", artifact, exc_info=True)
        return None
    return LocalTokenizer(tokenizer, context)


def count_with(local: LocalTokenizer, parsed: ParsedRequest) -> int:
    request = parsed.request
    if isinstance(request, ChatCompletionRequest):
        tools = request.tools if request.tools_active() else None
        try:
            return len(chat_prompt_ids(local.tokenizer, request.template_messages(), tools=tools))
        except PromptRejected as exc:
            raise APIError(
                400, f"This model's chat template refuses these messages: {exc}", param="messages", code="invalid_value"
            ) from None
    ids = request.prompt_token_ids()
    if ids is not None:
        return len(ids)
    return len(text_prompt_ids(local.tokenizer, request.prompt_text() or ""))


class PromptCounter:
    def __init__(self) -> None:
        self._local: dict[tuple[int, str], LocalTokenizer | None] = {}
        self._loading: dict[tuple[int, str], asyncio.Task[LocalTokenizer | None]] = {}

    def reset(self) -> None:
        self._local.clear()
        self._loading.clear()

    async def local(self, version: VersionRoute) -> LocalTokenizer | None:
        key = (version.id, version.artifact)
        if key in self._local:
            return self._local[key]
        task = self._loading.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(tokenizer_load, version.artifact))
            self._loading[key] = task
        loaded = await asyncio.shield(task)
        self._local[key] = loaded
        self._loading.pop(key, None)
        return loaded

    async def count(self, snap: Snapshot, route: ModelRoute, parsed: ParsedRequest, ctx: SignedContext) -> PromptCount:
        """The prompt's tokens (the most any of the model's versions makes of it)."""
        tokens: list[int] = []
        contexts: list[int] = []
        for version in route.versions:
            local = await self.local(version)
            if local is None:
                continue
            if parsed.prompt_bytes > _INLINE_BYTES:
                tokens.append(await asyncio.to_thread(count_with, local, parsed))
            else:
                tokens.append(count_with(local, parsed))
            contexts.append(local.context_length)
        if tokens:
            return PromptCount(max(tokens), min(contexts))
        asked = await self._ask_node(snap, route, parsed, ctx)
        return asked or PromptCount(parsed.prompt_estimate())

    async def _ask_node(
        self, snap: Snapshot, route: ModelRoute, parsed: ParsedRequest, ctx: SignedContext
    ) -> PromptCount | None:
        from gateway.conf import conf
        from gateway.registry import registry

        picked = registry.pick(snap, route)
        if picked is None:
            return None
        version, node = picked
        sign = SignedContext(
            tenant=ctx.tenant,
            key=ctx.key,
            request_id=attempt_id_new(),
            client_request_id=ctx.client_request_id,
            model_version=version.version,
        )
        try:
            response = await upstream_client().open(
                node.base_url,
                "/v1/tokenize",
                orjson.dumps(parsed.body),
                sign,
                secret=conf().signing_secret,
                timeout=conf().upstream_timeout_s,
            )
            try:
                payload = orjson.loads(await response.read())
            finally:
                response.release()
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            logger.warning("gateway: tokenize on node %s failed: %s", node.name, exc)
            return None
        if response.status == 400 and isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            error = payload["error"]
            raise APIError(400, str(error.get("message")), param=error.get("param"), code=error.get("code"))
        if response.status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("count"), int):
            return None
        return PromptCount(payload["count"], payload.get("context_length"), payload.get("max_tokens"))


prompt_counter = PromptCounter()
