"""The serving layer: OpenAI semantics on top of the scheduler and an engine.

HTTP handlers call `OpenAIServing`; it validates limits, asks the scheduler for a slot, runs the
request on the engine, keeps metrics and writes the usage record before the last byte goes out.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.engine.base import Engine, EngineOutput, EngineRequest, SamplingParams
from inference.engine.embedding_engine import ENGINE_KIND_EMBEDDING
from inference.journal import Journal, utc_iso
from inference.metrics import Metrics
from inference.responses import response_collect, response_stream, structured_module
from inference.scheduler import AdmissionError, AsyncScheduler, Ticket
from inference.telemetry import request_finished
from wire.attribution import Attribution
from wire.context import SignedContext
from wire.errors import APIError
from wire.prompt import PromptRejected
from wire.protocol import ChatCompletionRequest, CompletionRequest, RequestInvalid
from wire.tracing import span, trace_id_current, trace_id_of
from wire.usage import JournalRecord, Outcome

logger = logging.getLogger("inference.serving")

_ADMISSION_OUTCOME = {
    "rate_limit_exceeded": "rate_limited",
    "overloaded": "overloaded",
    "queue_timeout": "queue_timeout",
}


@dataclass(slots=True)
class ServedModel:
    name: str
    version: str
    engine: Engine
    scheduler: AsyncScheduler
    max_tokens: int


@dataclass(slots=True)
class NodeLifecycle:
    """Where the running node is in its life: started, draining, and how busy."""

    ready: bool = False
    draining: bool = False
    inflight: int = 0


class ModelRegistry:
    def __init__(self, models: Sequence[ServedModel], defaults: dict[str, str]) -> None:
        self._models = {(m.name, m.version): m for m in models}
        self._defaults = defaults

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def resolve(self, name: str, version: str) -> ServedModel:
        chosen = version or self._defaults.get(name, "")
        served = self._models.get((name, chosen))
        if served is None:
            if version and name in self._defaults:
                message = f"The model `{name}` has no version `{version}` on this node."
            else:
                message = f"The model `{name}` does not exist."
            raise APIError(404, message, param="model", code="model_not_found")
        return served


@dataclass(slots=True)
class Generation:
    """One admitted request: its engine stream, timings and (exactly one) usage record."""

    serving: OpenAIServing
    model: ServedModel
    ctx: SignedContext
    ticket: Ticket
    request: EngineRequest
    arrival_wall: float
    arrival: float
    dispatched: float
    labels: tuple[str, str, str]
    body: ChatCompletionRequest | CompletionRequest | None = None
    finishes: dict[int, str] = field(default_factory=dict)
    first_token: float | None = None
    last_token: float | None = None
    completion_tokens: int = 0
    finish_reason: Outcome | None = None
    recorded: bool = False
    closed: bool = False
    streaming: bool = False  # tokens reach the client as they come
    # Who the client says the request is for; journaled with its usage.
    attribution: Attribution = field(default_factory=Attribution)
    text_parts: list[str] = field(default_factory=list)
    engine_ms: float = 0.0  # engine step time charged to this request (inference/engine/accounting.py)

    async def outputs(self) -> AsyncIterator[EngineOutput]:
        metrics = self.serving.metrics
        remaining = self.request.params.n
        per_sequence: dict[int, int] = {}
        async for out in self.model.engine.generate(self.request):
            now = time.monotonic()
            if out.token_ids:
                if self.first_token is None:
                    self.first_token = now
                    metrics.ttft.labels(*self.labels).observe(now - self.arrival)
                elif self.last_token is not None:
                    metrics.itl.labels(*self.labels).observe(now - self.last_token)
                self.last_token = now
                self.model.scheduler.charge(self.ticket, len(out.token_ids))
            self.engine_ms = max(self.engine_ms, out.engine_ms)
            if out.index >= 0:
                per_sequence[out.index] = max(per_sequence.get(out.index, 0), out.completion_tokens)
                self.completion_tokens = sum(per_sequence.values())
            if out.finished:
                remaining -= 1
                failed = out.index < 0 or out.finish_reason not in ("stop", "length")
                if not failed:
                    self.finishes[out.index] = out.finish_reason or "stop"
                if not failed and remaining > 0:
                    yield out
                    continue
                if failed:
                    self.finish_reason = out.finish_reason or "error"
                else:  # all n sequences done: the request ran out of room if any one did
                    self.finish_reason = "length" if "length" in self.finishes.values() else "stop"
                if out.error:
                    logger.error("request %s failed in the engine: %s", self.request.request_id, out.error)
                # Durable before the caller sends the last byte of the response.
                with span("node.journal_commit"):
                    await self.serving.journal.append(self._record(self.finish_reason))
                self.recorded = True
                self._account(self.finish_reason)
                self.close()
                yield out
                return
            yield out
        # The engine stream ended without a final output: treat as aborted.
        self.close()

    def close(self) -> None:
        """Free the slot; if no record was written yet, the request was aborted. Never awaits."""
        if self.closed:
            return
        self.closed = True
        if not self.recorded:
            self.model.engine.abort(self.request.request_id)
            self.recorded = True
            self.finish_reason = "aborted"
            self.serving.journal.submit(self._record("aborted"))
            self._account("aborted")
        self.model.scheduler.release(self.ticket)

    def _account(self, outcome: Outcome) -> None:
        metrics = self.serving.metrics
        now = time.monotonic()
        metrics.requests.labels(*self.labels, outcome).inc()
        metrics.completion_tokens.labels(*self.labels).inc(self.completion_tokens)
        metrics.e2e.labels(*self.labels).observe(now - self.arrival)
        request_finished(self, outcome, now)

    def _record(self, outcome: Outcome) -> JournalRecord:
        now = time.monotonic()
        # An attempt our engine failed before the client got a byte of it (no token yet, or a
        # non-streaming answer that became a 500) is journaled but costs nothing.
        free = outcome == "error" and (self.first_token is None or not self.streaming)
        return JournalRecord(
            request_id=self.ticket.request_id,  # the attempt's id from the gateway, or one made here
            client_request_id=self.ctx.client_request_id or self.ticket.request_id,
            tenant=self.ctx.tenant,
            key=self.ctx.key,
            model=self.model.name,
            model_version=self.model.version,
            prompt_tokens=0 if free else len(self.request.prompt_ids),
            completion_tokens=0 if free else self.completion_tokens,
            outcome=outcome,
            queue_ms=round((self.dispatched - self.arrival) * 1000, 3),
            ttft_ms=None if self.first_token is None else round((self.first_token - self.arrival) * 1000, 3),
            duration_ms=round((now - self.arrival) * 1000, 3),
            started_at=utc_iso(self.arrival_wall),
            finished_at=utc_iso(self.arrival_wall + (now - self.arrival)),
            end_user=self.attribution.end_user(),
            metadata=self.attribution.tags(),
            engine_ms=round(self.engine_ms, 3),
            # The gateway's trace; the node's own when the gateway does not trace.
            trace_id=trace_id_of(self.ctx.traceparent) or trace_id_current(),
        )


class OpenAIServing:
    def __init__(self, *, registry: ModelRegistry, journal: Journal, metrics: Metrics, state: NodeLifecycle) -> None:
        self.registry = registry
        self.journal = journal
        self.metrics = metrics
        self.state = state

    # -- admission -------------------------------------------------------------------------------

    async def _admit(
        self,
        ctx: SignedContext,
        served: ServedModel,
        prompt_ids: list[int],
        requested: tuple[int | None, str],
        body: ChatCompletionRequest | CompletionRequest,
    ) -> Generation:
        if self.state.draining:
            raise APIError(503, "the inference node is shutting down", type="server_error", code="draining")
        engine = served.engine
        context = engine.context_length
        if len(prompt_ids) >= context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens; the prompt has {len(prompt_ids)}.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        max_tokens, param = requested
        if max_tokens is not None:
            scoring = max_tokens == 0 and isinstance(body, CompletionRequest) and bool(body.echo)
            if max_tokens <= 0 and not scoring:
                raise APIError(400, f"{param} must be at least 1", param=param, code="invalid_value")
            if max_tokens > served.max_tokens:
                raise APIError(
                    400, f"{param} must be at most {served.max_tokens} on this model", param=param, code="invalid_value"
                )
            if len(prompt_ids) + max_tokens > context:
                raise APIError(
                    400,
                    f"This model's maximum context length is {context} tokens; the prompt ({len(prompt_ids)}) "
                    f"plus {param} ({max_tokens}) exceeds it.",
                    param=param,
                    code="context_length_exceeded",
                )
        else:
            max_tokens = min(served.max_tokens, context - len(prompt_ids))
        params = self._sampling(served, body, max_tokens)
        request_id = ctx.request_id or str(uuid.uuid4())
        tenant = str(ctx.tenant)
        labels = (self.metrics.tenant_label(tenant), served.name, served.version)
        ticket = Ticket(
            request_id=request_id,
            tenant=tenant,
            prompt_tokens=len(prompt_ids),
            weight=ctx.weight,
            priority=ctx.priority,
            max_inflight=ctx.max_inflight,
            max_queued=ctx.max_queued,
            slots=params.n,
        )
        arrival_wall, arrival = time.time(), time.monotonic()
        try:
            await served.scheduler.acquire(ticket)
        except AdmissionError as exc:
            self.metrics.requests.labels(*labels, _ADMISSION_OUTCOME.get(exc.code, exc.code)).inc()
            raise APIError(
                exc.status,
                exc.message,
                type="rate_limit_exceeded" if exc.status == 429 else "server_error",
                code=exc.code,
                headers={"retry-after": str(exc.retry_after)},
            ) from exc
        dispatched = time.monotonic()
        self.metrics.queue_time.labels(*labels).observe(dispatched - arrival)
        self.metrics.prompt_tokens.labels(*labels).inc(len(prompt_ids))
        engine_request = EngineRequest(
            request_id=f"{request_id}-{uuid.uuid4().hex[:8]}",
            prompt_ids=prompt_ids,
            params=params,
            priority=ctx.priority,
        )
        return Generation(
            serving=self,
            model=served,
            ctx=ctx,
            ticket=ticket,
            request=engine_request,
            arrival_wall=arrival_wall,
            arrival=arrival,
            dispatched=dispatched,
            labels=labels,
            body=body,
        )

    def _sampling(
        self, served: ServedModel, body: ChatCompletionRequest | CompletionRequest, max_tokens: int
    ) -> SamplingParams:
        engine = served.engine
        n = body.choices()
        if n > engine.max_batch_size:
            raise APIError(
                400, f"n must be at most {engine.max_batch_size} on this model.", param="n", code="invalid_value"
            )
        bias = body.token_bias()
        vocab = engine.vocab_size
        if vocab and any(token >= vocab for token in bias):
            raise APIError(
                400,
                f"logit_bias names a token id outside this model's vocabulary (0-{vocab - 1}).",
                param="logit_bias",
                code="invalid_value",
            )
        chat = isinstance(body, ChatCompletionRequest)
        echo = not chat and bool(body.echo)  # type: ignore[union-attr]
        structure = self._structure(served, body) if isinstance(body, ChatCompletionRequest) else None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=body.stop_sequences(),
            n=n,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=tuple(sorted(bias.items())),
            logprobs=body.top_logprobs_count(),
            prompt_logprobs=body.top_logprobs_count() if echo else None,
            constraint=None if structure is None else structure.new_constraint,
            guided=None if structure is None else structure.vllm_params(),
        )

    @staticmethod
    def _structure(served: ServedModel, body: ChatCompletionRequest) -> Any:
        """The grammar a chat request's output must follow, or None (inference.structured decides)."""
        if not body.constrains_output():
            return None
        engine = served.engine
        try:
            return structured_module().structure_for(
                response_format=body.response_format,
                tools=body.tools,
                tool_choice=body.tool_choice,
                parallel_tool_calls=body.parallel_tool_calls,
                tokenizer=engine.tokenizer,
                vocab_size=engine.vocab_size or None,
            )
        except RequestInvalid as exc:  # a schema the grammar library cannot compile: the client's
            raise APIError(400, exc.message, param=exc.param, code=exc.code or "invalid_value") from None

    def prompt_ids(self, served: ServedModel, body: ChatCompletionRequest | CompletionRequest) -> list[int]:
        """The request's prompt as the engine will run it; the client's faults are 400s."""
        if isinstance(body, ChatCompletionRequest):
            messages = body.template_messages()
            tools = body.tools if body.tools_active() else None
            try:
                return served.engine.encode_chat(messages, tools=tools)
            except PromptRejected as exc:
                raise APIError(
                    400,
                    f"This model's chat template refuses these messages: {exc}",
                    param="messages",
                    code="invalid_value",
                ) from None
        given = body.prompt_token_ids()
        if given is not None:
            vocab = served.engine.vocab_size
            if vocab and any(not 0 <= i < vocab for i in given):
                raise APIError(
                    400,
                    f"prompt holds a token id outside this model's vocabulary (0-{vocab - 1}).",
                    param="prompt",
                    code="invalid_value",
                )
            return given
        prompt_ids = served.engine.encode(body.prompt_text() or "")
        if not prompt_ids:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        return prompt_ids

    def resolve_generative(self, name: str, version: str) -> ServedModel:
        """A model that generates text; an embedding model asked for chat or completions is a 400."""
        served = self.registry.resolve(name, version)
        if getattr(served.engine, "kind", "") == ENGINE_KIND_EMBEDDING:
            raise APIError(
                400,
                f"The model `{served.name}` makes embeddings only; call /v1/embeddings.",
                param="model",
                code="model_not_supported",
            )
        return served

    def tokenize(self, ctx: SignedContext, body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        """`POST /v1/tokenize`: the prompt's token count, by exactly the code generation uses."""
        served = self.resolve_generative(body.model, ctx.model_version)
        count = len(self.prompt_ids(served, body))
        return {
            "model": served.name,
            "model_version": served.version,
            "count": count,
            "context_length": served.engine.context_length,
            "max_tokens": served.max_tokens,
        }

    async def start_chat(self, ctx: SignedContext, body: ChatCompletionRequest) -> Generation:
        served = self.resolve_generative(body.model, ctx.model_version)
        return await self._admit(ctx, served, self.prompt_ids(served, body), body.requested_max_tokens(), body)

    async def start_completion(self, ctx: SignedContext, body: CompletionRequest) -> Generation:
        served = self.resolve_generative(body.model, ctx.model_version)
        return await self._admit(ctx, served, self.prompt_ids(served, body), body.requested_max_tokens(), body)

    # -- responses -------------------------------------------------------------------------------

    async def collect(self, gen: Generation) -> dict[str, Any]:
        """Run to the end and build the non-streaming response."""
        return await response_collect(gen)

    def stream(self, gen: Generation) -> AsyncIterator[bytes]:
        """SSE events; the usage record is durable before the final chunk is yielded."""
        return response_stream(gen)
