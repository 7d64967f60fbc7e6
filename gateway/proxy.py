"""The /v1 request path: authenticate, check, admit, route, forward, stream back, settle.

Per request on the warm path: no database query, one Redis round trip to admit and one to
settle (fired after the response has gone). The checks live in `gateway.access`, the trip to
the node in `gateway.forward`.
"""

import logging
import math
from typing import Any

import orjson
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from core.observability import request_id_from
from gateway.access import (
    authenticate,
    database_available,
    database_unavailable,
    limits_check,
    model_check,
    models_allowed,
    rate_limit_error,
)
from gateway.conf import conf
from gateway.embeddings import embedding_limits_check, embedding_parse, embedding_tokens
from gateway.forward import Forward
from gateway.metrics import QUOTA_REJECTIONS, TENANT_THROTTLED
from gateway.protocol import APIError, error_response, parse_body
from gateway.quota import Decision, backend, subjects_for
from gateway.registry import ModelRoute, Snapshot, registry
from gateway.tokens import prompt_counter
from tenants.types import KeyContext
from wire.context import SignedContext
from wire.logs import log_bind
from wire.tracing import span

logger = logging.getLogger(__name__)


async def _error_with_headers(exc: APIError, ctx: KeyContext | None) -> HttpResponse:
    """An error answer; once the key is known it carries the x-ratelimit-* headers too."""
    if ctx is not None and not any(name.startswith("x-ratelimit-") for name in exc.headers):
        try:
            exc.headers = {**(await backend().peek(subjects_for(ctx))).headers(), **exc.headers}
        except Exception:  # the error matters more than the headers
            logger.warning("gateway: quota peek failed", exc_info=True)
    return exc.response()


async def _snapshot(*, fresh: bool) -> Snapshot:
    """The routing snapshot; a 503 when there is none and the database cannot give one."""
    try:
        snap = await (registry.snapshot_fresh() if fresh else registry.snapshot())
    except DatabaseError as exc:
        raise database_unavailable(exc) from exc
    database_available()
    return snap


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other /v1 path: the JSON error shape, never Django's HTML page."""
    return error_response(
        404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url", type="invalid_request_error"
    )


# --- /v1/models ---------------------------------------------------------------------------------
def _model_object(route: ModelRoute) -> dict[str, Any]:
    return {"id": route.name, "object": "model", "created": route.created, "owned_by": route.owned_by}


async def handle_models(request: HttpRequest, model: str | None = None) -> HttpResponse:
    ctx: KeyContext | None = None
    try:
        if request.method != "GET":
            raise APIError(405, f"Method {request.method} is not allowed here.", code="method_not_allowed")
        ctx = await authenticate(request)
        snap = await _snapshot(fresh=True)
        if model is not None:
            route = model_check(snap, ctx, model)
            payload: dict[str, Any] = _model_object(route)
        else:
            payload = {"object": "list", "data": [_model_object(snap.models[n]) for n in models_allowed(snap, ctx)]}
        decision = await backend().peek(subjects_for(ctx))
    except APIError as exc:
        return await _error_with_headers(exc, ctx)
    body = orjson.dumps(payload)
    response = HttpResponse(body, content_type="application/json")
    response["content-length"] = str(len(body))
    for name, value in decision.headers().items():
        response[name] = value
    return response


# --- /v1/chat/completions and /v1/completions ------------------------------------------------------
async def handle_generate(request: HttpRequest, *, chat: bool) -> HttpResponseBase:
    ctx: KeyContext | None = None
    try:
        if request.method != "POST":
            raise APIError(405, f"Method {request.method} is not allowed here.", code="method_not_allowed")
        with span("gateway.authenticate"):
            ctx = await authenticate(request)
        log_bind(tenant=ctx.tenant_id, key_id=ctx.key_id)
        raw = _read_body(request)
        parsed = parse_body(raw, chat=chat)
        log_bind(model=parsed.model)
        snap, route = await _route(ctx, parsed.model)
        request_id = getattr(request, "request_id", None) or request_id_from(request)
        # The real prompt size (the model's tokenizer and chat template): reservations must hold.
        counted = await prompt_counter.count(
            snap, route, parsed, SignedContext(ctx.tenant_id, ctx.key_id, "", client_request_id=request_id)
        )
        parsed.prompt_tokens = counted.tokens
        decision = await _admit(ctx, parsed.prompt_estimate() + limits_check(parsed, ctx, counted))
    except APIError as exc:
        return await _error_with_headers(exc, ctx)
    forward = Forward(ctx, parsed, decision, request_id, request.path_info)
    return await forward.run(snap, route)


# --- /v1/embeddings --------------------------------------------------------------------------------
async def handle_embeddings(request: HttpRequest) -> HttpResponseBase:
    """Key, scope, model access, quotas and routing exactly as for chat; the body is the wire's model."""
    ctx: KeyContext | None = None
    try:
        if request.method != "POST":
            raise APIError(405, f"Method {request.method} is not allowed here.", code="method_not_allowed")
        with span("gateway.authenticate"):
            ctx = await authenticate(request)
        log_bind(tenant=ctx.tenant_id, key_id=ctx.key_id)
        body, parsed = embedding_parse(_read_body(request))
        log_bind(model=parsed.model)
        snap, route = await _route(ctx, parsed.model)
        request_id = getattr(request, "request_id", None) or request_id_from(request)
        parsed.prompt_tokens = await embedding_tokens(route, body, parsed.prompt_bytes)
        embedding_limits_check(parsed, ctx)
        # Prompt tokens only: an embedding has no output tokens to reserve.
        decision = await _admit(ctx, parsed.prompt_estimate())
    except APIError as exc:
        return await _error_with_headers(exc, ctx)
    forward = Forward(ctx, parsed, decision, request_id, request.path_info)
    return await forward.run(snap, route)


async def _route(ctx: KeyContext, model: str) -> tuple[Snapshot, ModelRoute]:
    """The model's route for this key (404 when it may not use it), and the tenant not throttled."""
    snap = await _snapshot(fresh=False)
    try:
        route = model_check(snap, ctx, model)
    except APIError:
        # Refusals are rechecked against a fresh registry (a grant may be a moment old).
        snap = await _snapshot(fresh=True)
        route = model_check(snap, ctx, model)
    if not any(v.node_ids for v in route.versions):
        # No node for this model in this snapshot: look again before answering 503.
        snap = await _snapshot(fresh=True)
        route = snap.models.get(model, route)
    throttled = registry.tenant_throttle.blocked_for(ctx.tenant_id)
    if throttled:
        TENANT_THROTTLED.labels(str(ctx.tenant_id)).inc()
        raise APIError(
            429,
            "Too many of your recent requests failed at the inference nodes. Please try again later.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": str(max(1, math.ceil(throttled)))},
        )
    return snap, route


async def _admit(ctx: KeyContext, tokens: int) -> Decision:
    """Quota admission for `tokens` (prompt plus reserved output); a refusal is the 429 it names."""
    try:
        with span("gateway.quota_admission"):
            decision = await backend().admit(subjects_for(ctx), tokens=tokens)
    except Exception as exc:  # Redis unreachable: refuse rather than run unmetered
        logger.exception("gateway: quota admission failed")
        raise APIError(
            503,
            "The rate limiter is unavailable. Please retry shortly.",
            type="server_error",
            code="service_unavailable",
            headers={"retry-after": "1"},
        ) from exc
    if not decision.admitted:
        QUOTA_REJECTIONS.labels(str(ctx.tenant_id), decision.code, decision.reason).inc()
        raise rate_limit_error(decision)
    return decision


def _read_body(request: HttpRequest) -> bytes:
    limit = conf().max_body_bytes
    too_large = APIError(
        413,
        f"The request body is too large (limit {limit} bytes).",
        code="request_too_large",
        type="invalid_request_error",
    )
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    try:
        raw = request.body
    except Exception as exc:  # RequestDataTooBig and friends
        raise too_large from exc
    if len(raw) > limit:
        raise too_large
    return raw
