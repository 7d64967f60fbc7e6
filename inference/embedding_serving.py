"""`POST /v1/embeddings` on the node: OpenAI semantics on top of the scheduler and an embedding engine.

The request is checked against the model (input lengths, token ids, `dimensions`), admitted by the
same per-tenant scheduler as generation, embedded by the engine's dynamic batcher, and its usage
(prompt tokens only) is durable in the journal before the response leaves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from inference.engine.embedding_engine import EmbeddingEngine
from inference.journal import utc_iso
from inference.scheduler import AdmissionError, Ticket
from inference.serving import OpenAIServing, ServedModel
from wire.context import SignedContext
from wire.embeddings import EmbeddingRequest, embedding_encode
from wire.errors import APIError
from wire.tracing import trace_id_current, trace_id_of
from wire.usage import JournalRecord, Outcome

# Tokenizing this many characters or more goes to a worker thread rather than the event loop.
_INLINE_CHARS = 16 * 1024


def embedding_model_resolve(
    serving: OpenAIServing, ctx: SignedContext, name: str
) -> tuple[ServedModel, EmbeddingEngine]:
    served = serving.registry.resolve(name, ctx.model_version)
    if not isinstance(served.engine, EmbeddingEngine):
        raise APIError(
            400, f"The model `{served.name}` does not make embeddings.", param="model", code="model_not_supported"
        )
    return served, served.engine


def embedding_inputs(engine: EmbeddingEngine, body: EmbeddingRequest) -> list[list[int]]:
    """Each input as the token ids the model runs; the client's faults are 400s naming the input."""
    texts = [item for item in body.input if isinstance(item, str)]
    encoded = iter(engine.encode_many(texts))  # one call for every text input
    inputs: list[list[int]] = []
    for i, item in enumerate(body.input):
        if isinstance(item, str):
            ids = next(encoded)
        else:
            bad = next((t for t in item if t >= engine.vocab_size), None)
            if bad is not None:
                raise APIError(
                    400,
                    f"input[{i}] holds token id {bad}, outside this model's vocabulary (0 to {engine.vocab_size - 1}).",
                    param="input",
                    code="invalid_value",
                )
            ids = engine.wrap(item)
        if len(ids) > engine.max_input_tokens:
            raise APIError(
                400,
                f"This model's maximum input length is {engine.max_input_tokens} tokens; input[{i}] has {len(ids)}.",
                param="input",
                code="context_length_exceeded",
            )
        inputs.append(ids)
    return inputs


def _dimensions_check(served: ServedModel, engine: EmbeddingEngine, body: EmbeddingRequest) -> None:
    # The model has one output size; asking for exactly it is a no-op, anything else cannot be honoured.
    if body.dimensions is not None and body.dimensions != engine.dimensions:
        raise APIError(
            400,
            f"The model `{served.name}` does not support `dimensions` other than its own {engine.dimensions}.",
            param="dimensions",
            code="unsupported_parameter",
        )


async def embeddings_create(serving: OpenAIServing, ctx: SignedContext, body: EmbeddingRequest) -> bytes:
    """The response body of one embeddings request; raises APIError for what the client got wrong."""
    if serving.state.draining:
        raise APIError(503, "the inference node is shutting down", type="server_error", code="draining")
    served, engine = embedding_model_resolve(serving, ctx, body.model)
    _dimensions_check(served, engine, body)
    chars = sum(len(item) for item in body.input if isinstance(item, str))
    if chars >= _INLINE_CHARS:
        inputs = await asyncio.to_thread(embedding_inputs, engine, body)
    else:
        inputs = embedding_inputs(engine, body)
    prompt_tokens = sum(len(ids) for ids in inputs)

    request_id = ctx.request_id or str(uuid.uuid4())
    labels = (serving.metrics.tenant_label(str(ctx.tenant)), served.name, served.version)
    ticket = Ticket(
        request_id=request_id,
        tenant=str(ctx.tenant),
        prompt_tokens=prompt_tokens,
        weight=ctx.weight,
        priority=ctx.priority,
        max_inflight=ctx.max_inflight,
        max_queued=ctx.max_queued,
    )
    metrics = serving.metrics
    arrival_wall, arrival = time.time(), time.monotonic()
    try:
        await served.scheduler.acquire(ticket)
    except AdmissionError as exc:
        outcome = {"rate_limit_exceeded": "rate_limited", "overloaded": "overloaded"}.get(exc.code, exc.code)
        metrics.requests.labels(*labels, outcome).inc()
        raise APIError(
            exc.status,
            exc.message,
            type="rate_limit_exceeded" if exc.status == 429 else "server_error",
            code=exc.code,
            headers={"retry-after": str(exc.retry_after)},
        ) from exc
    dispatched = time.monotonic()
    metrics.queue_time.labels(*labels).observe(dispatched - arrival)

    engine_ms = 0.0

    def record(outcome: Outcome, tokens: int) -> JournalRecord:
        now = time.monotonic()
        return JournalRecord(
            request_id=request_id,
            client_request_id=ctx.client_request_id or request_id,
            tenant=ctx.tenant,
            key=ctx.key,
            model=served.name,
            model_version=served.version,
            prompt_tokens=tokens,
            completion_tokens=0,
            outcome=outcome,
            queue_ms=round((dispatched - arrival) * 1000, 3),
            ttft_ms=None,
            duration_ms=round((now - arrival) * 1000, 3),
            started_at=utc_iso(arrival_wall),
            finished_at=utc_iso(arrival_wall + (now - arrival)),
            end_user=body.end_user(),
            metadata=body.tags(),
            trace_id=trace_id_of(ctx.traceparent) or trace_id_current(),
            engine_ms=round(engine_ms, 3),
        )

    try:
        vectors, engine_ms = await engine.embed_timed(inputs)
    except asyncio.CancelledError:
        # The client went away: the batch may still run, so the tokens count as served.
        serving.journal.submit(record("aborted", prompt_tokens))
        metrics.requests.labels(*labels, "aborted").inc()
        raise
    except Exception as exc:
        # Our fault, not the client's: journaled, free.
        await serving.journal.append(record("error", 0))
        metrics.requests.labels(*labels, "error").inc()
        raise APIError(500, "the engine failed to embed the input", type="server_error", code="engine_error") from exc
    finally:
        served.scheduler.release(ticket)
    await serving.journal.append(record("stop", prompt_tokens))
    metrics.requests.labels(*labels, "stop").inc()
    metrics.prompt_tokens.labels(*labels).inc(prompt_tokens)
    metrics.e2e.labels(*labels).observe(time.monotonic() - arrival)

    as_base64 = body.base64()
    payload: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding_encode(vector, as_base64=as_base64)}
            for i, vector in enumerate(vectors)
        ],
        "model": served.name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
