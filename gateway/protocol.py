"""Validation of /v1 request bodies and the OpenAI error bodies the gateway answers with.

Validation is hand-written on purpose: it runs on every request and must stay in microseconds.
Anything not understood is refused with a precise 400 before anything is forwarded or counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
from django.http import HttpResponse

from gateway.conf import conf
from wire.errors import APIError as WireAPIError
from wire.errors import error_payload


class APIError(WireAPIError):
    """The envelope's error on `/v1`, answered as a Django response."""

    def response(self) -> HttpResponse:
        return error_response(
            self.status, self.message, type=self.type, param=self.param, code=self.code, headers=self.headers
        )


def error_body(message: str, *, status: int, type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(error_payload(message, status_code=status, error_type=type, param=param, code=code))


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body = error_body(message, status=status, type=type, param=param, code=code)
    response = HttpResponse(body, status=status, content_type="application/json")
    response["content-length"] = str(len(body))
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# Parameters the gateway forwards; anything else is refused (OpenAI: "Unrecognized request argument").
COMMON_PARAMS = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "stop",
        "n",
        "seed",
        "user",
        "presence_penalty",
        "frequency_penalty",
    }
)
CHAT_PARAMS = COMMON_PARAMS | {"messages", "max_completion_tokens"}
COMPLETION_PARAMS = COMMON_PARAMS | {"prompt"}
# Known OpenAI parameters this platform does not implement: a clear 400, never silently ignored.
UNSUPPORTED = frozenset(
    {
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "response_format",
        "best_of",
        "echo",
        "suffix",
        "parallel_tool_calls",
        "audio",
        "modalities",
        "prediction",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
    }
)
ROLES = frozenset({"system", "user", "assistant", "developer"})


@dataclass(slots=True)
class ParsedRequest:
    model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    max_tokens: int | None
    prompt_bytes: int
    messages: int
    body: dict[str, Any]
    prompt_tokens: int | None = None  # counted by the model's tokenizer, once known

    def prompt_estimate(self) -> int:
        """The prompt's tokens: the real count once known, else an estimate from its size."""
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        per = conf().prompt_bytes_per_token
        return math.ceil(self.prompt_bytes / per) + 4 * self.messages


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value):
        raise invalid(f"'{name}' must be a number.", name, "invalid_type")
    if not (low < value if low_open else low <= value) or value > high:
        side = "above" if low_open else "at least"
        raise invalid(f"'{name}' must be {side} {low:g} and at most {high:g}.", name, "invalid_value")


def _content_bytes(content: Any, param: str) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        total = 0
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Only text content parts are supported.", f"{param}[{i}]", "unsupported_content")
            total += len(part["text"].encode())
        return total
    raise invalid("'content' must be a string or a list of text parts.", param, "invalid_type")


def parse_body(raw: bytes, *, chat: bool) -> ParsedRequest:
    """Check a chat or completions body; raise APIError(400) on anything wrong."""
    if not raw:
        raise invalid("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    allowed = CHAT_PARAMS if chat else COMPLETION_PARAMS
    for name in body:
        if name in UNSUPPORTED:
            raise invalid(f"'{name}' is not supported.", name, "unsupported_parameter")
        if name not in allowed:
            raise invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")

    model = body.get("model")
    if model is None:
        raise invalid("You must provide a model parameter.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string.", "model", "invalid_type")

    stream = body.get("stream", False)
    if stream is None:
        # OpenAI takes null for false; the node does not, so it never sees it.
        body.pop("stream")
        stream = False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream", "invalid_type")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise invalid("'stream_options' may only hold 'include_usage'.", "stream_options", "invalid_value")
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        value = options.get("include_usage", False)
        if not isinstance(value, bool):
            raise invalid("'stream_options.include_usage' must be a boolean.", "stream_options", "invalid_type")
        include_usage = value

    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid("Only n=1 is supported.", "n", "unsupported_value")
    max_tokens: int | None = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise invalid(f"'{name}' must be an integer.", name, "invalid_type")
        if value < 1:
            raise invalid(f"'{name}' must be at least 1.", name, "invalid_value")
        if max_tokens is not None and max_tokens != value:
            raise invalid("Give 'max_tokens' or 'max_completion_tokens', not both.", name)
        max_tokens = value
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1, low_open=True)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise invalid("'seed' must be an integer.", "seed", "invalid_type")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("'user' must be a string.", "user", "invalid_type")
    stop = body.get("stop")
    if (stop is not None and not isinstance(stop, str)) and (
        not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)
    ):
        raise invalid("'stop' must be a string or a list of up to 4 non-empty strings.", "stop", "invalid_type")

    prompt_bytes = 0
    messages = 0
    if chat:
        items = body.get("messages")
        if items is None:
            raise invalid("'messages' is a required property.", "messages", "missing_required_parameter")
        if not isinstance(items, list):
            raise invalid("'messages' must be an array.", "messages", "invalid_type")
        if not items:
            raise invalid("'messages' must hold at least one message.", "messages", "invalid_value")
        for i, message in enumerate(items):
            param = f"messages[{i}]"
            if not isinstance(message, dict):
                raise invalid("Each message must be an object.", param, "invalid_type")
            role = message.get("role")
            if role not in ROLES:
                raise invalid(f"'role' must be one of {', '.join(sorted(ROLES))}.", f"{param}.role", "invalid_value")
            if set(message) - {"role", "content", "name"}:
                extra = sorted(set(message) - {"role", "content", "name"})[0]
                raise invalid(f"Unsupported message field: {extra}", f"{param}.{extra}", "unsupported_parameter")
            if message.get("name") is not None and not isinstance(message["name"], str):
                raise invalid("'name' must be a string.", f"{param}.name", "invalid_type")
            if "content" not in message:
                raise invalid("Each message needs 'content'.", f"{param}.content", "missing_required_parameter")
            prompt_bytes += _content_bytes(message["content"], f"{param}.content")
        messages = len(items)
    else:
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid("'prompt' is a required property.", "prompt", "missing_required_parameter")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise invalid("'prompt' must be a string (batches and token arrays are not supported).", "prompt")
        prompt_bytes = len(prompt.encode())
    return ParsedRequest(model, stream, include_usage, max_tokens, prompt_bytes, messages, body)
