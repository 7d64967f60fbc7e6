"""One admitted /v1 request on its way to a node and back: the pooled upstream client, the signed
context, retries on another node, streaming or buffered relay, settling the quota afterwards.

Bodies pass through as bytes; only the usage chunk of a stream is looked at, and removed when
the client did not ask for it.
"""

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol

import aiohttp
import orjson
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from gateway.conf import conf
from gateway.protocol import error_response
from gateway.quota import Decision, backend
from gateway.registry import ModelRoute, NodeInfo, Snapshot, VersionRoute, registry
from tenants.types import KeyContext
from wire.client import InferenceClient
from wire.context import SignedContext
from wire.logs import log_bind
from wire.tracing import span, traceparent_current

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


class Forwardable(Protocol):
    """What forwarding reads of a checked request (a generation's or an embeddings one)."""

    model: str
    stream: bool
    include_usage: bool
    body: dict[str, Any]

    def prompt_estimate(self) -> int: ...


class Forward:
    """One admitted request on its way to a node and back."""

    def __init__(self, ctx: KeyContext, parsed: Forwardable, decision: Decision, request_id: str, path: str) -> None:
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
            traceparent=traceparent_current(),
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
            with span("gateway.route"):
                picked = registry.pick(snap, route, frozenset(tried))
            if picked is None:
                break
            version, node = picked
            tried.add(node.id)
            registry.acquire(node.id)
            self.attempt_id = attempt_id_new()
            log_bind(node=node.name, attempt_id=self.attempt_id)
            try:
                # Until the node's response headers; the node's spans are its children.
                with span("gateway.upstream", {"mmorch.node": node.name, "mmorch.attempt_id": self.attempt_id}):
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
