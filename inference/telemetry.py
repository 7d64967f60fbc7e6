"""The node's logs and traces: structured lines with the request's fields, and spans.

Traces are on when OTEL_EXPORTER_OTLP_ENDPOINT is set (wire/tracing.py). The node joins a
request's trace only through the signed context: its propagator reads the gateway's
`x-mmorch-traceparent` (covered by the request's HMAC; a request whose signature fails is answered
401 before any work) and ignores a plain `traceparent` header anyone could send. The engine's
spans (queue, prefill, decode) are recorded afterwards from the times the node measures anyway,
so nothing runs in the engine loop.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from wire.context import HEADER_TRACEPARENT, SignedContext
from wire.logs import LOG_FORMAT_ENV, log_bind, log_request_start, logging_setup
from wire.tracing import context_current, span_record, tracing_enabled, tracing_setup

if TYPE_CHECKING:
    from fastapi import FastAPI

    from inference.config import NodeConfig
    from inference.serving import Generation

SERVICE_NAME = "mmorch-inference"
# Probes and scrapes are not worth a trace.
_UNTRACED_URLS = "/health,/ready,/metrics"

_node_name = ""
_requests_log = logging.getLogger("inference.requests")


def node_name_of(config: NodeConfig) -> str:
    return config.node_name or f"{socket.gethostname()}:{config.port}"


def telemetry_setup(config: NodeConfig) -> None:
    """Logging for the whole process, and tracing when an OTLP endpoint is configured."""
    global _node_name
    _node_name = node_name_of(config)
    logging_setup(service="inference", level=config.log_level, environ={LOG_FORMAT_ENV: config.log_format})
    tracing_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        "OTEL_SERVICE_NAME": os.environ.get("OTEL_SERVICE_NAME", ""),
    }
    if tracing_setup(SERVICE_NAME, tracing_env):
        from opentelemetry.propagate import set_global_textmap

        set_global_textmap(_signed_propagator())


def instrument_app(app: FastAPI) -> None:
    """Server spans for the node's HTTP API (only when tracing is on)."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=_UNTRACED_URLS, exclude_spans=["receive", "send"])


def _signed_propagator() -> Any:
    """W3C trace context read from the signed header only (built here: tracing off imports nothing)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    class SignedTraceContext(TraceContextTextMapPropagator):
        _TRACEPARENT_HEADER_NAME = HEADER_TRACEPARENT
        _TRACESTATE_HEADER_NAME = "x-mmorch-tracestate"  # never sent: the gateway signs no state

    return SignedTraceContext()


def request_bind(ctx: SignedContext) -> None:
    """Every line logged for this request carries its ids, tenant, key id and this node's name."""
    log_request_start(ctx.client_request_id or ctx.request_id)
    log_bind(attempt_id=ctx.request_id, tenant=ctx.tenant, key_id=ctx.key, node=_node_name)


def _wall_ns(gen: Generation, monotonic: float) -> int:
    return int((gen.arrival_wall + (monotonic - gen.arrival)) * 1e9)


def request_finished(gen: Generation, outcome: str, now: float) -> None:
    """One line per finished or aborted request, and its engine-side spans from the measured times."""
    _requests_log.info(
        "request finished",
        extra={
            "outcome": outcome,
            "model_version": gen.model.version,
            "prompt_tokens": len(gen.request.prompt_ids),
            "completion_tokens": gen.completion_tokens,
            "queue_ms": round((gen.dispatched - gen.arrival) * 1000, 3),
            "ttft_ms": None if gen.first_token is None else round((gen.first_token - gen.arrival) * 1000, 3),
            "duration_ms": round((now - gen.arrival) * 1000, 3),
        },
    )
    if not tracing_enabled():
        return
    parent = context_current()
    attributes = {
        "mmorch.tenant": gen.ctx.tenant,
        "mmorch.model": gen.model.name,
        "mmorch.model_version": gen.model.version,
        "mmorch.attempt_id": gen.ticket.request_id,
    }
    span_record(
        "node.queue", _wall_ns(gen, gen.arrival), _wall_ns(gen, gen.dispatched), parent=parent, attributes=attributes
    )
    first = gen.first_token if gen.first_token is not None else now
    span_record(
        "node.prefill",
        _wall_ns(gen, gen.dispatched),
        _wall_ns(gen, first),
        parent=parent,
        attributes={**attributes, "mmorch.prompt_tokens": len(gen.request.prompt_ids)},
    )
    if gen.first_token is not None:
        span_record(
            "node.decode",
            _wall_ns(gen, gen.first_token),
            _wall_ns(gen, gen.last_token or now),
            parent=parent,
            attributes={**attributes, "mmorch.completion_tokens": gen.completion_tokens, "mmorch.outcome": outcome},
        )
