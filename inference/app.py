"""The HTTP layer: routes, signature checks, error format. No scheduling logic lives here."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from inference.config import NodeConfig
from inference.embedding_serving import embeddings_create
from inference.engine.base import Engine
from inference.engine.embedding_engine import EmbeddingEngine
from inference.journal import Journal
from inference.metrics import Metrics
from inference.replay import ReplayCache
from inference.scheduler import AsyncScheduler, FairScheduler, QueueBudget
from inference.serving import Generation, ModelRegistry, NodeLifecycle, OpenAIServing, ServedModel
from inference.telemetry import request_bind
from wire.attribution import attribution_parse
from wire.context import SignedContext
from wire.embeddings import embedding_request_parse
from wire.errors import APIError
from wire.logs import log_bind
from wire.protocol import ChatCompletionRequest, CompletionRequest, RequestInvalid, parse_body
from wire.signing import HEADER_SIGNATURE, SignatureError, verify_signature

logger = logging.getLogger("inference.app")


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: APIError) -> Response:
    # The envelope is wire.errors' (APIError.body); this only puts it on the wire.
    return JSONBytes(exc.body(), status_code=exc.status, headers=exc.headers)


class SSEResponse(StreamingResponse):
    """Streams while listening for the client to leave, whatever the server's ASGI version.

    Starlette skips the disconnect listener on ASGI 2.4 servers and notices a gone client only on
    the next write; a request waiting between tokens would keep its engine slot until then.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streamer = asyncio.ensure_future(self.stream_response(send))
        listener = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streamer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streamer, listener):
                if not task.done():
                    task.cancel()
            for task in (streamer, listener):
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await task
            self._on_close()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guard_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run `work`, cancelling it the moment the client disconnects (frees its slot at once)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return Response(status_code=499)


@dataclass(slots=True)
class Node:
    """Everything one running node holds; the app keeps it on `app.state.node`."""

    config: NodeConfig
    state: NodeLifecycle
    journal: Journal
    metrics: Metrics
    registry: ModelRegistry
    serving: OpenAIServing
    engines: list[Engine]
    replays: ReplayCache
    loop: asyncio.AbstractEventLoop | None = None

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - the drain deadline is configuration
        """Stop admitting, wait for in-flight requests (up to `timeout`), flush the journal."""
        self.state.draining = True
        self.metrics.draining.set(1)
        deadline = time.monotonic() + timeout
        # Polling keeps the in-flight count a plain int that handlers bump without coordination.
        while self.state.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.journal.flush, 10.0)


EngineFactory = Callable[[Any], Engine]


def _default_engine(spec: Any) -> Engine:
    if spec.engine == "vllm":
        from inference.engine.vllm_engine import VLLMEngine

        return VLLMEngine(model_path=spec.path, options=spec.options)
    if spec.engine == "embedding":
        return EmbeddingEngine(
            model_path=spec.path,
            max_batch_size=spec.options.max_batch_size,
            device=spec.options.device,
            dtype=spec.options.dtype if spec.options.dtype != "auto" else "float32",
            threads=spec.options.threads,
            batch_window_ms=spec.options.batch_window_ms,
        )
    from inference.engine.torch_engine import TorchEngine

    opts = spec.options
    return TorchEngine(
        model_path=spec.path,
        max_batch_size=opts.max_batch_size,
        max_tokens=opts.max_tokens,
        device=opts.device,
        dtype=opts.dtype if opts.dtype != "auto" else "float32",
        threads=opts.threads,
    )


def build_node(config: NodeConfig, *, engine_factory: EngineFactory = _default_engine) -> Node:
    metrics = Metrics(max_tenants=config.metrics_max_tenants)
    budget = QueueBudget(config.global_queue_cap)
    served: list[ServedModel] = []
    engines: list[Engine] = []
    for spec in config.models:
        engine = engine_factory(spec)
        engines.append(engine)
        core = FairScheduler(
            capacity=spec.options.max_batch_size,
            clock=time.monotonic,
            policy=config.scheduler,
            queue_timeout_s=config.queue_timeout_s,
            budget=budget,
            reserve_slots=config.reserve_slots,
            reserve_window_s=config.reserve_window_s,
        )
        name, version = spec.name, spec.version

        def on_change(tenant: str, *, core: FairScheduler = core, name: str = name, version: str = version) -> None:
            label = metrics.tenant_label(tenant)
            # Tenants folded into `other` share one series: it shows their sum.
            members = [t for t in core.tenants if metrics.tenant_label(t) == label] if label != tenant else [tenant]
            metrics.running.labels(label, name, version).set(sum(core.running_of(t) for t in members))
            metrics.waiting.labels(label, name, version).set(sum(core.waiting_of(t) for t in members))

        scheduler = AsyncScheduler(core, on_change=on_change)
        served.append(
            ServedModel(
                name=name, version=version, engine=engine, scheduler=scheduler, max_tokens=spec.options.max_tokens
            )
        )
        metrics.watch_batch(name, version, engine.running)
        if isinstance(engine, EmbeddingEngine):
            metrics.watch_embedding(name, version, engine.counts)
    defaults = {}
    for spec in config.models:
        default = config.default_version(spec.name)
        if default is not None:
            defaults[spec.name] = default
    registry = ModelRegistry(served, defaults)
    journal = Journal(config.journal_path, retention_days=config.journal_retention_days)
    state = NodeLifecycle()
    serving = OpenAIServing(registry=registry, journal=journal, metrics=metrics, state=state)
    return Node(
        config=config,
        state=state,
        journal=journal,
        metrics=metrics,
        registry=registry,
        serving=serving,
        engines=engines,
        replays=ReplayCache(window_s=config.signature_max_skew_s, capacity=config.replay_cache_size),
    )


def _signed_path(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + (("?" + query.decode("latin-1")) if query else "")


async def _authenticate(request: Request, node: Node, body: bytes) -> SignedContext:
    try:
        ctx = verify_signature(
            node.config.shared_secrets,
            request.method,
            _signed_path(request),
            body,
            request.headers,
            max_skew=node.config.signature_max_skew_s,
        )
    except SignatureError as exc:
        raise APIError(
            401, f"invalid request signature: {exc}", type="authentication_error", code="invalid_signature"
        ) from None
    # Each signed attempt is served once: the same signed bytes sent again are a replay. Without
    # an id the signature itself names the attempt (it covers the timestamp and the body).
    attempt = ctx.request_id or request.headers.get(HEADER_SIGNATURE, "")
    if not node.replays.first_use(attempt):
        raise APIError(
            401, "invalid request signature: replayed request", type="authentication_error", code="replayed_request"
        )
    request_bind(ctx)
    return ctx


async def _read_body(request: Request, node: Node) -> bytes:
    declared = request.headers.get("content-length")
    limit = node.config.max_body_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    body = await request.body()
    if len(body) > limit:
        raise APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    return body


def _metrics_authorize(request: Request, config: NodeConfig) -> None:
    """With a token, /metrics needs it as a Bearer header (constant-time compare, else 401); without
    one it answers 404, as an unknown path does, unless metrics_public opens it."""
    if not config.metrics_token:
        if not config.metrics_public:
            raise StarletteHTTPException(404, "Not Found")
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.metrics_token.encode()):
        raise APIError(
            401,
            "a valid metrics bearer token is required",
            type="authentication_error",
            code="invalid_metrics_token",
            headers={"www-authenticate": 'Bearer realm="metrics"'},
        )


def create_app(config: NodeConfig, *, engine_factory: EngineFactory = _default_engine) -> FastAPI:
    node = build_node(config, engine_factory=engine_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        node.loop = asyncio.get_running_loop()
        node.journal.open()
        for engine in node.engines:
            await engine.start()
        node.state.ready = True
        logger.info("inference node ready: %s", ", ".join(f"{m.name}@{m.version}" for m in node.registry.all()))
        try:
            yield
        finally:
            node.state.ready = False
            for engine in node.engines:
                await engine.stop()
            await asyncio.to_thread(node.journal.close)

    app = FastAPI(title="mm-orch inference node", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.node = node

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        return error_response(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # A fault of ours (engine, disk): logged, answered in the one error format.
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(APIError(500, "internal error", type="server_error", code="internal_error"))

    @app.get("/health")
    async def health() -> Response:
        healthy = all(engine.healthy() for engine in node.engines) if node.state.ready else False
        return JSONBytes({"status": "ok" if healthy else "unhealthy"}, status_code=200 if healthy else 503)

    @app.get("/ready")
    async def ready() -> Response:
        ok = node.state.ready and not node.state.draining and all(e.healthy() for e in node.engines)
        status = "ready" if ok else ("draining" if node.state.draining else "not_ready")
        return JSONBytes({"status": status}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        _metrics_authorize(request, node.config)
        return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        await _authenticate(request, node, await request.body())
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "mm-orch", "version": m.version}
            for m in node.registry.all()
        ]
        return JSONBytes({"object": "list", "data": data})

    async def _openai(
        request: Request,
        start: Callable[[SignedContext, Any], Awaitable[Generation]],
        model_cls: type[ChatCompletionRequest] | type[CompletionRequest],
    ) -> Response:
        started = time.monotonic()
        body_bytes = await _read_body(request, node)
        ctx = await _authenticate(request, node, body_bytes)
        try:
            body = parse_body(model_cls, body_bytes)
            # As the journal and the ledger hold it (an end user of at most 256 characters).
            attribution = attribution_parse(
                {"user": body.user, "safety_identifier": body.safety_identifier, "metadata": body.metadata}
            )
        except RequestInvalid as exc:
            raise APIError(400, exc.message, param=exc.param, code=exc.code) from exc
        log_bind(model=body.model)
        node.state.inflight += 1
        handed_off = False
        try:

            async def work() -> Response:
                nonlocal handed_off
                gen = await start(ctx, body)
                gen.attribution = attribution
                headers = {"x-request-id": gen.ticket.request_id, "x-mmorch-model-version": gen.model.version}
                if body.streaming:
                    gen.streaming = True
                    handed_off = True
                    stream = node.serving.stream(gen)
                    return SSEResponse(stream, on_close=_stream_closed(gen), headers=headers)
                try:
                    payload = await node.serving.collect(gen)
                finally:
                    gen.close()
                headers["openai-processing-ms"] = str(round((time.monotonic() - started) * 1000))
                return JSONBytes(payload, headers=headers)

            return await guard_disconnect(request, work())
        finally:
            if not handed_off:
                node.state.inflight -= 1

    def _stream_closed(gen: Generation) -> Callable[[], None]:
        def closed() -> None:
            gen.close()
            node.state.inflight -= 1

        return closed

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _openai(request, node.serving.start_chat, ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _openai(request, node.serving.start_completion, CompletionRequest)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body_bytes = await _read_body(request, node)
        ctx = await _authenticate(request, node, body_bytes)
        try:
            body = embedding_request_parse(body_bytes)
        except RequestInvalid as exc:
            raise APIError(400, exc.message, param=exc.param, code=exc.code) from exc
        node.state.inflight += 1
        try:

            async def work() -> Response:
                payload = await embeddings_create(node.serving, ctx, body)
                headers = {"x-request-id": ctx.request_id} if ctx.request_id else None
                return Response(payload, media_type="application/json", headers=headers)

            return await guard_disconnect(request, work())
        finally:
            node.state.inflight -= 1

    @app.post("/v1/tokenize")
    async def tokenize(request: Request) -> Response:
        # A chat or completions body: the gateway asks when it has no tokenizer of its own.
        body_bytes = await _read_body(request, node)
        ctx = await _authenticate(request, node, body_bytes)
        try:
            raw = orjson.loads(body_bytes)
        except orjson.JSONDecodeError:
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
        try:
            body: ChatCompletionRequest | CompletionRequest = (
                parse_body(ChatCompletionRequest, body_bytes)
                if isinstance(raw, dict) and "messages" in raw
                else parse_body(CompletionRequest, body_bytes)
            )
        except RequestInvalid as exc:
            raise APIError(400, exc.message, param=exc.param, code=exc.code) from exc
        return JSONBytes(node.serving.tokenize(ctx, body))

    @app.get("/internal/usage")
    async def internal_usage(request: Request) -> Response:
        await _authenticate(request, node, await request.body())
        after = _int_param(request, "after", 0, minimum=0, maximum=2**62)
        limit = _int_param(request, "limit", 1000, minimum=1, maximum=10000)
        page = await asyncio.to_thread(node.journal.read_page, after=after, limit=limit)
        return JSONBytes(page.model_dump())

    return app


def _int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name} must be an integer", param=name, code="invalid_value") from None
    if not minimum <= value <= maximum:
        raise APIError(400, f"{name} must be between {minimum} and {maximum}", param=name, code="invalid_value")
    return value
