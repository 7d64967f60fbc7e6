"""Validation of /v1 request bodies and the OpenAI error bodies the gateway answers with.

Bodies are validated by the wire model the node uses too (`wire.protocol`), plus the plan's caps.
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
from wire.protocol import ChatCompletionRequest, CompletionRequest, RequestInvalid, request_validate


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


@dataclass(slots=True)
class ParsedRequest:
    model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    max_tokens: int | None
    prompt_bytes: int
    messages: int
    body: dict[str, Any]
    request: ChatCompletionRequest | CompletionRequest  # the validated wire model (both planes share it)
    prompt_tokens: int | None = None  # counted by the model's tokenizer, once known

    @property
    def n(self) -> int:
        return self.request.choices()

    @property
    def user(self) -> str | None:
        return self.request.user

    @property
    def safety_identifier(self) -> str | None:
        return self.request.safety_identifier

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.request.metadata or {})

    def prompt_estimate(self) -> int:
        """The prompt's tokens: the real count once known, else an estimate from its size."""
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        per = conf().prompt_bytes_per_token
        return math.ceil(self.prompt_bytes / per) + 4 * self.messages


def parse_body(raw: bytes, *, chat: bool) -> ParsedRequest:
    """Check a chat or completions body against the wire model; raise APIError(400) on anything wrong."""
    if not raw:
        raise invalid("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", code="invalid_json")
    request: ChatCompletionRequest | CompletionRequest
    try:
        request = request_validate(ChatCompletionRequest, body) if chat else request_validate(CompletionRequest, body)
    except RequestInvalid as exc:
        raise invalid(exc.message, exc.param, exc.code) from None
    cap = conf().max_n
    if request.choices() > cap:
        raise invalid(f"'n' must be at most {cap} on this plan.", "n", "invalid_value")
    max_tokens, _ = request.requested_max_tokens() if chat else (request.max_tokens, "max_tokens")
    if isinstance(request, ChatCompletionRequest):
        prompt_bytes = sum(len(m.text().encode()) for m in request.messages)
        if request.tools_active():
            prompt_bytes += len(orjson.dumps(request.tools))
        parsed = ParsedRequest(
            request.model,
            request.streaming,
            request.include_usage(),
            max_tokens,
            prompt_bytes,
            len(request.messages),
            body,
            request,
        )
        return parsed
    ids = request.prompt_token_ids()
    text = request.prompt_text()
    parsed = ParsedRequest(
        request.model,
        request.streaming,
        request.include_usage(),
        max_tokens,
        len((text or "").encode()),
        0,
        body,
        request,
    )
    if ids is not None:
        parsed.prompt_tokens = len(ids)  # token arrays count themselves
    return parsed
