"""Request ids, Prometheus metrics and health endpoints of the control plane.

Metrics work with several worker processes: when PROMETHEUS_MULTIPROC_DIR is set (the
Makefile and the images set it), every process writes its samples there and /metrics
aggregates them.
"""

from __future__ import annotations

import hmac
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.registry import Collector

from core.dbpool import db_pool_sample
from wire.errors import error_payload
from wire.logs import log_request_start

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

HTTP_REQUESTS = Counter(
    "mmorch_http_requests_total", "HTTP requests served by the control plane", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "mmorch_http_request_duration_seconds",
    "Time to the response headers, by route",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def request_id_from(request: HttpRequest) -> str:
    """The caller's request id when it is well formed, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID_RE.match(given) else f"req_{uuid.uuid4().hex}"


def _route_of(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unmatched"
    return match.route or match.view_name or "unmatched"


class _SyncAndAsync:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)  # type: ignore[type-var]


class RequestIdMiddleware(_SyncAndAsync):
    """Gives every request an id (`request.request_id`), puts it on every log line of the request
    and echoes it in the response."""

    def __call__(self, request: HttpRequest) -> Any:
        request.request_id = request_id_from(request)  # type: ignore[attr-defined]
        log_request_start(request.request_id)  # type: ignore[attr-defined]
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id  # type: ignore[attr-defined]
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        response = await self.get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id  # type: ignore[attr-defined]
        return response


class MetricsMiddleware(_SyncAndAsync):
    """Counts requests and times them to the response headers (streams keep flowing after)."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, started)
        return response

    @staticmethod
    def _observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
        route = _route_of(request)
        method = request.method or "GET"
        elapsed = time.perf_counter() - started
        if request.path.startswith("/v1/"):
            # OpenAI's header: time to the response headers (a stream keeps flowing after).
            response["openai-processing-ms"] = str(round(elapsed * 1000))
        HTTP_LATENCY.labels(route, method).observe(elapsed)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


ReadinessCheck = Callable[[], "tuple[bool, str]"]
_extra_checks: list[tuple[str, ReadinessCheck]] = []


def readiness_check_register(name: str, check: ReadinessCheck) -> None:
    """Apps add checks here (the gateway adds 'at least one ready inference node')."""
    _extra_checks.append((name, check))


def _check_database() -> tuple[bool, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return True, "ok"


def _check_redis() -> tuple[bool, str]:
    if not settings.REDIS_URL:
        return True, "not configured"
    from core.redis_url import redis_client

    client = redis_client(settings.REDIS_URL, timeout=1)  # standalone, Sentinel or Cluster
    try:
        client.ping()
    finally:
        client.close()
    return True, "ok"


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    ready = True
    for name, check in [("database", _check_database), ("redis", _check_redis), *_extra_checks]:
        try:
            ok, detail = check()
        except Exception as exc:  # a failing dependency is the answer, not an error
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks[name] = detail
        ready = ready and ok
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


# Collectors computed from the database at scrape time (ingestion lag, billing runs): they hold
# the same value in every process, so they stay out of the per-process multiprocess files.
_scrape_registry = CollectorRegistry(auto_describe=False)


def scrape_collector_register(collector: Collector) -> None:
    _scrape_registry.register(collector)


def _metrics_refusal(request: HttpRequest) -> JsonResponse | None:
    """None when the caller may read /metrics, else the answer: with a token, a Bearer header that
    matches it (compared in constant time); without one, 404 in production, open in development."""
    token: str = settings.MMORCH_METRICS_TOKEN
    if not token:
        if settings.IS_PRODUCTION:
            return JsonResponse(error_payload("not found", status_code=404, code="not_found"), status=404)
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    refused = JsonResponse(
        error_payload("a valid metrics bearer token is required", status_code=401, code="invalid_metrics_token"),
        status=401,
    )
    refused["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return refused


def metrics(request: HttpRequest) -> HttpResponse:
    refused = _metrics_refusal(request)
    if refused is not None:
        return refused
    db_pool_sample()  # this process's pool figures, fresh (the others' come from their samplers)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = DEFAULT_REGISTRY
    body = generate_latest(registry) + generate_latest(_scrape_registry)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


AsyncView = Callable[..., Awaitable[HttpResponse]]
