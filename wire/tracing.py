"""Distributed traces (OpenTelemetry), shared by both planes; imports neither.

On only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans
go over OTLP/HTTP in batches from a background thread. Off, nothing is imported and nothing is
installed: `span()` returns a shared no-op context after one None check.

An export that fails (collector down, wrong address) is logged once and the spans are dropped;
it never reaches a request. The gateway hands a request's trace to the node as a W3C traceparent
inside the signed context (wire/context.py), so a node only joins traces the gateway vouched for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Tracer

logger = logging.getLogger("mmorch.tracing")

TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32

_tracer: Tracer | None = None
_NO_SPAN = contextlib.nullcontext()
_setup_lock = threading.Lock()


def tracing_endpoint(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    # The exporter itself reads these too (and the rest of OTEL_EXPORTER_OTLP_*: headers, timeout).
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    return traces or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()


def tracing_enabled() -> bool:
    return _tracer is not None


class _WarnOnceExporter:
    """Wraps the OTLP exporter: a failed export is one warning per process, never an exception."""

    def __init__(self, inner: Any, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._warned = False

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            result = self._inner.export(spans)
        except Exception as exc:  # the exporter's own fault must not kill the export thread
            result, detail = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        else:
            detail = ""
        if result is not SpanExportResult.SUCCESS and not self._warned:
            self._warned = True
            logger.warning(
                "trace export to %s failed%s; spans are dropped while it fails (warned once)",
                self._endpoint,
                f" ({detail})" if detail else "",
            )
        return result

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self._inner.force_flush(timeout_millis))
        except Exception:
            return False


def tracing_setup(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider exporting over OTLP/HTTP when an endpoint is configured.

    Returns whether tracing is on. Idempotent: a second call in the same process changes nothing.
    """
    global _tracer
    endpoint = tracing_endpoint(environ)
    if not endpoint:
        return False
    with _setup_lock:
        if _tracer is not None:
            return True
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        env = os.environ if environ is None else environ
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "").strip() or service})
        provider = TracerProvider(resource=resource)
        exporter = _WarnOnceExporter(OTLPSpanExporter(), endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
        trace.set_tracer_provider(provider)
        _tracer = provider.get_tracer("mmorch")
    return True


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span around a block (the current span's child); a no-op when tracing is off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


def span_record(
    name: str, start_ns: int, end_ns: int, *, parent: Context | None, attributes: Mapping[str, Any] | None = None
) -> None:
    """A span from times measured elsewhere (queue, prefill, decode on the node)."""
    if _tracer is None or end_ns < start_ns:
        return
    recorded = _tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    recorded.end(end_time=end_ns)


def context_current() -> Context | None:
    """The active trace context, to parent spans recorded later; None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def traceparent_current() -> str:
    """The active span as a W3C traceparent ("" when tracing is off or no span is active)."""
    if _tracer is None:
        return ""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return ""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_current() -> str:
    """The active trace's id (32 hex), "" when tracing is off or nothing is traced here."""
    if _tracer is None:
        return ""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def trace_id_of(traceparent: str) -> str:
    """The trace id (32 hex) of a traceparent, "" when there is none or it is malformed."""
    match = TRACEPARENT_RE.match(traceparent)
    if match is None or match.group(1) == _ZERO_TRACE:
        return ""
    return match.group(1)
