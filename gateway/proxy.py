"""The /v1 request path: authenticate, check, admit, route, forward, stream back, settle.

Per request on the warm path: no database query, one Redis round trip to admit and one to
settle (fired after the response has gone). Bodies pass through as bytes; only the usage
chunk of a stream is looked at, and removed when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from core.observability import request_id_from
from gateway.conf import conf
from gateway.metrics import QUOTA_REJECTIONS, TENANT_THROTTLED
from gateway.protocol import APIError, ParsedRequest, error_response, parse_body
from gateway.quota import Decision, backend, subjects_for
from gateway.registry import ModelRoute, NodeInfo, Snapshot, VersionRoute, registry
from gateway.tokens import PromptCount, prompt_counter
from tenants.keyauth import KEY_TENANT_SUSPENDED, akey_check, key_mark_used, key_mark_used_due
from tenants.types import KeyContext
from wire.client import InferenceClient
from wire.context import SignedContext

logger = logging.getLogger(__name__)

_client: tuple[asyncio.AbstractEventLoop, InferenceClient] | None = None


def upstream_client() -> InferenceClient:
    """The process's pooled client; a new one if the event loop changed (tests run many loops)."""
    global _client
    loop = asyncio.get_running_loop()
    if _client is None or _client[0] is not loop:
        _client = (loop, InferenceClient(pool_size=conf().upstream_pool_size))
    return _client[1]


async def upstream_client_close() -> None:
    global _client
    if _client is not None and _client[0] is asyncio.get_running_loop():
        await _client[1].close()
    _client = None


_background: set[asyncio.Task[Any]] = set()
_RETRYABLE = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def background(coro: Coroutine[Any, Any, Any]) -> None:
    """Run after the response (settling, last-used marks); survives the request's cancellation."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _quietly(coro: Coroutine[Any, Any, Any], what: str) -> None:
    try:
        await coro
    except Exception:
        logger.exception("gateway: %s failed", what)


def _secret() -> str:
    return conf().signing_secret


def attempt_id_new() -> str:
    """A UUIDv7 for one attempt: 48 bits of Unix milliseconds (sortable), 74 random bits.

    The client's x-request-id is only for correlation; usage is keyed on this one, so no client
    can make two requests one (or swallow another tenant's usage by reusing its id).
    """
    ms = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = ms << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


# --- the database going away ---------------------------------------------------------------------
_outage_since: float | None = None


def database_unavailable(exc: BaseException) -> APIError:
    """A 503 the client may retry; logged once per outage, not once per request."""
    global _outage_since
    if _outage_since is None:
        _outage_since = time.monotonic()
        logger.error("gateway: the database is unreachable; /v1 answers 503 until it is back: %s", exc)
    return APIError(
        503,
        "The service is temporarily unavailable. Please retry shortly.",
        type="server_error",
        code="service_unavailable",
        headers={"retry-after": "2"},
    )


def _database_back() -> None:
    global _outage_since
    if _outage_since is not None:
        logger.warning("gateway: the database is reachable again after %.1f s", time.monotonic() - _outage_since)
        _outage_since = None


# --- authentication and access ------------------------------------------------------------------
async def authenticate(request: HttpRequest) -> KeyContext:
    header = request.headers.get("authorization", "")
    scheme, _, raw = header.partition(" ")
    raw = raw.strip()
    if not header or scheme.lower() != "bearer" or not raw:
        raise APIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    try:
        ctx, reason = await akey_check(raw)
    except DatabaseError as exc:  # a key not in the cache while the database is down
        raise database_unavailable(exc) from exc
    if reason == KEY_TENANT_SUSPENDED:
        raise APIError(403, "This organization is suspended.", type="permission_error", code="permission_denied")
    if ctx is None:
        masked = f"{raw[:3]}...{raw[-4:]}" if len(raw) > 8 else "***"
        raise APIError(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
    if not ctx.has_scope("inference"):
        raise APIError(
            403, "This API key lacks the 'inference' scope.", type="permission_error", code="permission_denied"
        )
    # last_used_at is written at most once a minute per key: only then is a thread involved.
    if conf().mark_keys_used and key_mark_used_due(ctx.key_id):
        background(_quietly(sync_to_async(_mark_used, thread_sensitive=False)(ctx.key_id), "key_mark_used"))
    return ctx


def _mark_used(key_id: int) -> None:
    """Runs in a worker thread: the write, then give the thread's connection back."""
    try:
        key_mark_used(key_id, due_checked=True)
    finally:
        close_old_connections()


def models_allowed(snap: Snapshot, ctx: KeyContext) -> list[str]:
    """Models the tenant may use (plan or grant) narrowed by the key's allow-list."""
    names = snap.tenant_models(ctx.tenant_id)
    if ctx.allowed_models:
        names = names & ctx.allowed_models
    return sorted(n for n in names if n in snap.models)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_check(snap: Snapshot, ctx: KeyContext, name: str) -> ModelRoute:
    """The model's route; a model this key may not use looks exactly like one that does not exist."""
    route = snap.models.get(name)
    if (
        route is None
        or name not in snap.tenant_models(ctx.tenant_id)
        or (ctx.allowed_models and name not in ctx.allowed_models)
    ):
        raise model_not_found(name)
    return route


def limits_check(parsed: ParsedRequest, ctx: KeyContext, counted: PromptCount | None = None) -> int:
    """Per-plan and per-model input limits; returns the number of output tokens to reserve."""
    lim = ctx.key_limits
    if lim.max_messages is not None and parsed.messages > lim.max_messages:
        raise APIError(
            400,
            f"Too many messages: {parsed.messages} (this plan allows {lim.max_messages}).",
            param="messages",
            code="too_many_messages",
        )
    prompt = parsed.prompt_estimate()
    prompt_param = "messages" if parsed.messages else "prompt"
    about = "" if parsed.prompt_tokens is not None else "about "
    if lim.max_prompt_tokens is not None and prompt > lim.max_prompt_tokens:
        raise APIError(
            400,
            f"The prompt is too long: {about}{prompt} tokens (this plan allows {lim.max_prompt_tokens}).",
            param=prompt_param,
            code="context_length_exceeded",
        )
    context = counted.context_length if counted is not None else None
    if context is not None and prompt >= context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens; the prompt has {prompt}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if parsed.max_tokens is not None:
        if lim.max_output_tokens is not None and parsed.max_tokens > lim.max_output_tokens:
            raise APIError(
                400,
                f"max_tokens is too large: {parsed.max_tokens} (this plan allows {lim.max_output_tokens}).",
                param="max_tokens",
                code="invalid_value",
            )
        node_cap = counted.max_tokens if counted is not None else None
        if node_cap is not None and parsed.max_tokens > node_cap:
            raise APIError(
                400, f"max_tokens must be at most {node_cap} on this model.", param="max_tokens", code="invalid_value"
            )
        if context is not None and prompt + parsed.max_tokens > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens; the prompt ({prompt}) plus max_tokens "
                f"({parsed.max_tokens}) exceeds it.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return parsed.max_tokens
    room = context - prompt if context is not None else None
    if lim.max_output_tokens is not None:
        # Make the plan's cap explicit so the node stops there and the reservation holds.
        parsed.body["max_tokens"] = lim.max_output_tokens
        return lim.max_output_tokens
    default = conf().default_reserve_tokens
    return default if room is None else min(default, room)


def rate_limit_error(decision: Decision) -> APIError:
    headers = decision.headers()
    if decision.code == "insufficient_quota":
        what = "spend cap" if decision.reason == "monthly_spend" else "token budget"
        return APIError(
            429,
            f"You exceeded your current quota: the monthly {what} is used up.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    messages = {
        "requests": "Rate limit reached for requests per minute.",
        "tokens": "Rate limit reached for tokens per minute.",
        "request_too_large": "Request too large: it needs more tokens than the tokens-per-minute limit allows.",
        "concurrency": "Too many concurrent requests.",
    }
    return APIError(
        429,
        f"{messages.get(decision.reason, 'Rate limit reached.')} Please try again later.",
        type="tokens" if decision.reason in ("tokens", "request_too_large") else "requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


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
    _database_back()
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
        ctx = await authenticate(request)
        raw = _read_body(request)
        parsed = parse_body(raw, chat=chat)
        snap = await _snapshot(fresh=False)
        try:
            route = model_check(snap, ctx, parsed.model)
        except APIError:
            # Refusals are rechecked against a fresh registry (a grant may be a moment old).
            snap = await _snapshot(fresh=True)
            route = model_check(snap, ctx, parsed.model)
        if not any(v.node_ids for v in route.versions):
            # No node for this model in this snapshot: look again before answering 503.
            snap = await _snapshot(fresh=True)
            route = snap.models.get(parsed.model, route)
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
        request_id = getattr(request, "request_id", None) or request_id_from(request)
        # The real prompt size (the model's tokenizer and chat template): reservations must hold.
        counted = await prompt_counter.count(
            snap, route, parsed, SignedContext(ctx.tenant_id, ctx.key_id, "", client_request_id=request_id)
        )
        parsed.prompt_tokens = counted.tokens
        reserve = parsed.prompt_estimate() + limits_check(parsed, ctx, counted)
        try:
            decision = await backend().admit(subjects_for(ctx), tokens=reserve)
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
    except APIError as exc:
        return await _error_with_headers(exc, ctx)
    forward = _Forward(ctx, parsed, decision, request_id, request.path_info)
    return await forward.run(snap, route)


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


class _Forward:
    """One admitted request on its way to a node and back."""

    def __init__(self, ctx: KeyContext, parsed: ParsedRequest, decision: Decision, request_id: str, path: str) -> None:
        self.ctx = ctx
        self.parsed = parsed
        self.decision = decision
        self.request_id = request_id
        self.path = path
        self.settled = False
        self.attempt_id = ""
        self.request_key = uuid.uuid4().hex  # this gateway request, whatever id the client sent

    def _context(self, version: VersionRoute, attempt_id: str) -> SignedContext:
        tenant = self.ctx.tenant_limits
        return SignedContext(
            tenant=self.ctx.tenant_id,
            key=self.ctx.key_id,
            request_id=attempt_id,
            client_request_id=self.request_id,
            weight=max(1, tenant.scheduling_weight),
            max_inflight=tenant.max_concurrent_requests or 0,
            max_queued=conf().node_max_queued,
            model_version=version.version,
        )

    def _upstream_body(self) -> bytes:
        body = self.parsed.body
        if self.parsed.stream:
            # Always ask for usage: it settles the quotas. Removed again if the client did not ask.
            body = {**body, "stream_options": {"include_usage": True}}
        return orjson.dumps(body)

    def settle(self, used_tokens: int, *, refund_request: bool = False) -> None:
        if self.settled:
            return
        self.settled = True
        background(
            _quietly(backend().settle(self.decision, used_tokens=used_tokens, refund_request=refund_request), "settle")
        )

    def _headers(self, response: HttpResponseBase, version: VersionRoute) -> HttpResponseBase:
        for name, value in self.decision.headers().items():
            response[name] = value
        response["x-mmorch-model-version"] = version.version
        response["x-mmorch-attempt-id"] = self.attempt_id
        return response

    async def run(self, snap: Snapshot, route: ModelRoute) -> HttpResponseBase:
        body = self._upstream_body()
        tried: set[int] = set()
        upstream: aiohttp.ClientResponse | None = None
        picked: tuple[VersionRoute, NodeInfo] | None = None
        server_errors: list[tuple[int, str]] = []  # nodes that answered this request with a 5xx
        for _attempt in range(2):  # the first node, then one retry elsewhere (a new attempt, a new id)
            picked = registry.pick(snap, route, frozenset(tried))
            if picked is None:
                break
            version, node = picked
            tried.add(node.id)
            registry.acquire(node.id)
            self.attempt_id = attempt_id_new()
            try:
                upstream = await upstream_client().open(
                    node.base_url,
                    self.path,
                    body,
                    self._context(version, self.attempt_id),
                    secret=_secret(),
                    timeout=conf().upstream_timeout_s,
                )
            except _RETRYABLE as exc:
                registry.release(node.id)
                registry.node_failed(node.id, node.name)
                logger.warning("gateway: node %s unreachable: %s", node.name, exc)
                upstream = None
                continue
            except asyncio.CancelledError:
                # The client went away while we waited: keep the reservation (the node journals
                # what it did) and free the slot.
                registry.release(node.id)
                self.settle(self.decision.reserved)
                raise
            if upstream.status >= 500:
                # One request's 5xx never takes a node away: the breaker counts distinct requests.
                registry.release(node.id)
                server_errors.append((node.id, node.name))
                logger.warning("gateway: node %s answered %s", node.name, upstream.status)
                upstream.close()
                upstream = None
                continue
            # 2xx, and 4xx too: the node is fine, the client's input is not (passed on, never retried).
            registry.node_answered(node.id)
            # Another node could serve it, so those 5xx were the nodes' fault: the breakers count them.
            for failed_id, failed_name in server_errors:
                registry.node_server_error(failed_id, self.request_key, failed_name)
            break
        if upstream is None or picked is None:
            self.settle(0, refund_request=True)
            if server_errors:
                # Failing wherever it goes: the request is the likely cause, so the tenant is
                # throttled and the nodes are not.
                c = conf()
                registry.tenant_throttle.failure(
                    self.ctx.tenant_id, limit=c.tenant_failures_per_minute, block_s=c.tenant_throttle_s
                )
            response = error_response(
                503,
                "No inference node can take this request right now. Please retry shortly.",
                type="server_error",
                code="service_unavailable",
                headers=self.decision.headers(),
            )
            response["retry-after"] = "1"
            return response
        version, node = picked
        if upstream.status >= 400 or not self.parsed.stream:
            return await self._buffered(upstream, node, version)
        return self._streaming(upstream, node, version)

    async def _buffered(self, upstream: aiohttp.ClientResponse, node: NodeInfo, version: VersionRoute) -> HttpResponse:
        used = 0
        try:
            payload = await upstream.read()
            if upstream.status < 400:
                used = _usage_total(payload)
        except asyncio.CancelledError:
            upstream.close()
            self.settle(self.decision.reserved)
            raise
        except _RETRYABLE:
            upstream.close()
            self.settle(self.decision.reserved)
            return error_response(
                502,
                "The inference node failed while answering.",
                type="server_error",
                code="bad_gateway",
                headers=self.decision.headers(),
            )
        finally:
            registry.release(node.id)
        upstream.release()
        self.settle(used)
        response = HttpResponse(
            payload, status=upstream.status, content_type=upstream.headers.get("content-type", "application/json")
        )
        response["content-length"] = str(len(payload))
        if upstream.status == 429 and "retry-after" in upstream.headers:
            response["retry-after"] = upstream.headers["retry-after"]
        self._headers(response, version)
        return response

    def _streaming(
        self, upstream: aiohttp.ClientResponse, node: NodeInfo, version: VersionRoute
    ) -> StreamingHttpResponse:
        response = StreamingHttpResponse(
            self._relay(upstream, node), content_type=upstream.headers.get("content-type", "text/event-stream")
        )
        response["cache-control"] = "no-cache"
        response["x-accel-buffering"] = "no"
        self._headers(response, version)
        return response

    async def _relay(self, upstream: aiohttp.ClientResponse, node: NodeInfo) -> AsyncIterator[bytes]:
        strip = not self.parsed.include_usage
        used: int | None = None
        chunks = 0
        pending = b""
        finished = False
        renew_every = conf().lease_ttl_ms / 3000
        next_renew = time.monotonic() + renew_every
        try:
            async for data in upstream.content.iter_any():
                pending += data
                # Pass on every complete event now; hold back only a partial one.
                lf, crlf = pending.rfind(b"\n\n"), pending.rfind(b"\r\n\r\n")
                cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
                if cut == 0 and len(pending) < 65536:
                    continue
                cut = cut or len(pending)
                out, pending = pending[:cut], pending[cut:]
                if b'"usage":{' in out or b'"usage": {' in out:
                    out, found = _take_usage(out, strip)
                    if found is not None:
                        used = found
                chunks += out.count(b"data: ")
                if out:
                    yield out
                if time.monotonic() >= next_renew and self.decision.lease:
                    next_renew = time.monotonic() + renew_every
                    background(_quietly(backend().renew(self.decision), "lease renew"))
            if pending:
                yield pending
            finished = True
        finally:
            registry.release(node.id)
            if finished:
                upstream.release()
            else:
                # Client gone or upstream broke: closing the connection aborts the generation.
                upstream.close()
            if used is None:
                # No usage chunk (aborted): the node journals the truth; estimate for the quotas.
                used = self.parsed.prompt_estimate() + chunks
            self.settle(used)


def _usage_total(payload: bytes) -> int:
    try:
        usage = orjson.loads(payload).get("usage") or {}
        return int(usage.get("total_tokens") or (usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0


def _take_usage(block: bytes, strip: bool) -> tuple[bytes, int | None]:
    """Find the usage in a block of SSE events; drop the usage-only event when `strip`."""
    kept: list[bytes] = []
    used: int | None = None
    for event in block.split(b"\n\n"):
        if not event:
            continue
        line = event.strip()
        if line.startswith(b"data:") and (b'"usage":{' in line or b'"usage": {' in line):
            try:
                obj = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                used = int(usage.get("total_tokens") or 0)
                if strip and not obj.get("choices"):
                    continue
        kept.append(event)
    return (b"\n\n".join(kept) + b"\n\n") if kept else b"", used
