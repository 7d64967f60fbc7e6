"""The control plane's traces: the SDK set up once per process (wire/tracing.py) and the
maintained instrumentations for Django, the /v1 lane (ASGI), the aiohttp client that speaks to
nodes, Celery, psycopg and Redis. Off, and free, unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
"""

from __future__ import annotations

from typing import Any

from wire.tracing import tracing_enabled, tracing_setup

SERVICE_NAME = "mmorch-control-plane"
# Probes and scrapes are not worth a trace.
_UNTRACED_URLS = "/healthz,/readyz,/metrics"

_instrumented = False


def control_plane_tracing(service: str = SERVICE_NAME) -> bool:
    """Install tracing and the instrumentations; before Django loads its middleware (the Django
    instrumentation adds one). Returns whether tracing is on."""
    global _instrumented
    if not tracing_setup(service):
        return False
    if _instrumented:
        return True
    _instrumented = True
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    DjangoInstrumentor().instrument(excluded_urls=_UNTRACED_URLS)
    PsycopgInstrumentor().instrument(skip_dep_check=True)
    RedisInstrumentor().instrument()
    AioHttpClientInstrumentor().instrument()
    return True


def asgi_traced(app: Any) -> Any:
    """The /v1 lane with a server span per request (it skips Django's middleware, and with it the
    Django instrumentation); the app itself when tracing is off."""
    if not tracing_enabled():
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, excluded_urls=_UNTRACED_URLS, exclude_spans=["receive", "send"])


def celery_tracing(service: str) -> None:
    """A Celery worker or beat: spans per task, published and run, plus the database and Redis."""
    if not control_plane_tracing(service):
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()
