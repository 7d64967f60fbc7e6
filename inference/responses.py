"""OpenAI response shapes built from engine outputs: choices, log-probabilities and usage.

Every field the OpenAI types require is present (`refusal: null` on a chat message, `logprobs: null`
on a choice without them, the usage details this node knows).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from inference.engine.base import EngineOutput, TokenLogprob
from wire.errors import APIError
from wire.protocol import ChatCompletionRequest, CompletionRequest

if TYPE_CHECKING:
    from inference.serving import Generation

TokenText = Callable[[int], str]


@dataclass(slots=True)
class ChoiceState:
    """What one of the request's n sequences produced so far."""

    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0

    def text(self) -> str:
        return "".join(self.parts)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    # Nothing here caches prompts or reasons: both counts are known zeros, not unknowns.
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _token_entry(text_of: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    text = text_of(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(text_of: TokenText, lps: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's `logprobs`: one entry per generated token with its alternatives."""
    content = [
        {
            **_token_entry(text_of, lp.token_id, lp.logprob),
            "top_logprobs": [_token_entry(text_of, t, v) for t, v in lp.top],
        }
        for lp in lps
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(text_of: TokenText, entries: list[tuple[int, TokenLogprob | None]]) -> dict[str, Any]:
    """A completion choice's `logprobs` (the legacy shape): parallel lists over (token id, logprob);
    a None logprob is the prompt's first token, which nothing came before."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    position = 0
    for token_id, lp in entries:
        if lp is None:
            text = text_of(token_id)
            tokens.append(text)
            token_logprobs.append(None)
            top.append(None)
            offsets.append(position)
            position += len(text)
            continue
        text = text_of(lp.token_id)
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        top.append({text_of(t): v for t, v in lp.top})
        offsets.append(position)
        position += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_message(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(gen: Generation) -> dict[str, Any]:
    return usage(len(gen.request.prompt_ids), gen.completion_tokens)


def _echo(gen: Generation) -> str:
    body = gen.body
    if not isinstance(body, CompletionRequest) or not body.echo:
        return ""
    text = body.prompt_text()
    if text is None:
        engine = gen.model.engine
        text = "".join(engine.token_text(i) for i in gen.request.prompt_ids)
    return text


def _prompt_entries(gen: Generation, choice: ChoiceState) -> list[tuple[int, Any]]:
    if choice.prompt_logprobs is None:
        return []
    return list(zip(gen.request.prompt_ids, choice.prompt_logprobs, strict=False))


async def response_collect(gen: Generation) -> dict[str, Any]:
    """Run to the end and build the non-streaming response."""
    n = gen.request.params.n
    choices = [ChoiceState(i) for i in range(n)]
    try:
        async for out in gen.outputs():
            if out.index < 0:
                continue
            choice = choices[out.index]
            if out.text:
                choice.parts.append(out.text)
            if out.logprobs:
                choice.logprobs.extend(out.logprobs)
            if out.prompt_logprobs is not None and choice.prompt_logprobs is None:
                choice.prompt_logprobs = out.prompt_logprobs
            if out.finished:
                choice.finish_reason = out.finish_reason
    finally:
        gen.close()
    if gen.finish_reason not in ("stop", "length"):
        raise APIError(500, "the engine failed to complete the request", type="server_error", code="engine_error")
    created = int(gen.arrival_wall)
    body = gen.body
    text_of = gen.model.engine.token_text
    if isinstance(body, ChatCompletionRequest):
        asked = body.top_logprobs_count() is not None
        tools = body.tools if body.tools_active() else None
        max_calls = 1 if body.parallel_tool_calls is False else None
        chat_choices = []
        for c in choices:
            content: str | None = c.text()
            calls: list[dict[str, Any]] = []
            if tools:
                content, calls = structured_module().parse_tool_calls(c.text(), tools, max_calls=max_calls)
            finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
            chat_choices.append(
                {
                    "index": c.index,
                    "message": chat_message(content, calls or None),
                    "logprobs": chat_logprobs(text_of, c.logprobs) if asked else None,
                    "finish_reason": finish,
                }
            )
        return {
            "id": f"chatcmpl-{gen.request.request_id}",
            "object": "chat.completion",
            "created": created,
            "model": gen.model.name,
            "system_fingerprint": gen.model.version,
            "service_tier": "default",
            "choices": chat_choices,
            "usage": _usage(gen),
        }
    echo = _echo(gen)
    asked = body is not None and body.top_logprobs_count() is not None
    completion_choices = []
    for c in choices:
        logprobs = None
        if asked:
            generated = [(lp.token_id, lp) for lp in c.logprobs]
            logprobs = completion_logprobs(text_of, _prompt_entries(gen, c) + generated)
        completion_choices.append(
            {"index": c.index, "text": echo + c.text(), "logprobs": logprobs, "finish_reason": c.finish_reason}
        )
    return {
        "id": f"cmpl-{gen.request.request_id}",
        "object": "text_completion",
        "created": created,
        "model": gen.model.name,
        "system_fingerprint": gen.model.version,
        "choices": completion_choices,
        "usage": _usage(gen),
    }


async def response_stream(gen: Generation) -> AsyncIterator[bytes]:
    """SSE events; the usage record is durable before the final chunk is yielded."""
    body = gen.body
    chat = isinstance(body, ChatCompletionRequest)
    include_usage = body is not None and body.include_usage()
    asked = body is not None and body.top_logprobs_count() is not None
    text_of = gen.model.engine.token_text
    n = gen.request.params.n
    created = int(gen.arrival_wall)
    base: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{gen.request.request_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": gen.model.name,
        "system_fingerprint": gen.model.version,
    }
    if chat:
        base["service_tier"] = "default"
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}
    tools = body.tools if isinstance(body, ChatCompletionRequest) and body.tools_active() else None
    max_calls = 1 if isinstance(body, ChatCompletionRequest) and body.parallel_tool_calls is False else None
    tool_streams = [structured_module().ToolCallStream(tools, max_calls=max_calls) for _ in range(n)] if tools else None
    echo = _echo(gen)
    started: set[int] = set()

    def event(index: int, delta: dict[str, Any] | str, finish: str | None, logprobs: Any = None) -> bytes:
        if isinstance(delta, dict):
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **usage_field})

    def deltas(out: EngineOutput) -> list[bytes]:
        """The events one engine output makes for its choice."""
        events: list[bytes] = []
        i = out.index
        if chat:
            if i not in started:
                started.add(i)
                events.append(event(i, {"role": "assistant", "content": "", "refusal": None}, None))
            lps = chat_logprobs(text_of, out.logprobs or []) if asked and out.logprobs else None
            pieces = tool_streams[i].feed(out.text) if tool_streams and out.text else None
            if pieces is None:
                if out.text or lps:
                    events.append(event(i, {"content": out.text}, None, lps))
            else:
                for k, piece in enumerate(pieces):
                    events.append(event(i, piece, None, lps if k == 0 else None))
            return events
        if i not in started:
            started.add(i)
            if echo:
                prompt = [(t, lp) for t, lp in zip(gen.request.prompt_ids, out.prompt_logprobs or [], strict=False)]
                lps = completion_logprobs(text_of, prompt) if asked and prompt else None
                events.append(event(i, echo, None, lps))
        if out.text or out.logprobs:
            lps = None
            if asked and out.logprobs:
                lps = completion_logprobs(text_of, [(lp.token_id, lp) for lp in out.logprobs])
            events.append(event(i, out.text, None, lps))
        return events

    def finished(out: EngineOutput) -> list[bytes]:
        i = out.index
        events: list[bytes] = []
        finish: str | None = out.finish_reason
        if tool_streams:
            for piece in tool_streams[i].finish():
                events.append(event(i, piece, None))
            if tool_streams[i].saw_tool_call and finish == "stop":
                finish = "tool_calls"
        events.append(event(i, {} if chat else "", finish))
        return events

    try:
        async for out in gen.outputs():
            if out.index < 0 or (out.finished and out.finish_reason not in ("stop", "length")):
                error = APIError(500, "the engine failed", type="server_error", code="engine_error")
                yield _sse(error.body())
                break
            for chunk in deltas(out):
                yield chunk
            if out.finished:
                for chunk in finished(out):
                    yield chunk
            if gen.finish_reason is not None:
                if gen.finish_reason in ("stop", "length") and include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(gen)})
                break
        yield b"data: [DONE]\n\n"
    finally:
        gen.close()


def structured_module() -> Any:
    """inference.structured (grammars, tool-call parsing), loaded on first use: it pulls in llguidance."""
    try:
        return importlib.import_module("inference.structured")
    except ModuleNotFoundError as exc:
        raise APIError(
            400,
            "Structured outputs and tools are not available on this node.",
            param="response_format",
            code="unsupported_parameter",
        ) from exc
