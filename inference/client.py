"""Signing and talking to inference nodes; the only module the control plane imports.

Kept light on purpose (stdlib + aiohttp): it sits on the gateway's hot path and must not pull
in torch, transformers or fastapi.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

HEADER_TENANT = "x-mmorch-tenant"
HEADER_KEY = "x-mmorch-key"
HEADER_REQUEST_ID = "x-request-id"
HEADER_WEIGHT = "x-mmorch-weight"
HEADER_MAX_INFLIGHT = "x-mmorch-max-inflight"
HEADER_MAX_QUEUED = "x-mmorch-max-queued"
HEADER_PRIORITY = "x-mmorch-priority"
HEADER_MODEL_VERSION = "x-mmorch-model-version"
HEADER_TIMESTAMP = "x-mmorch-timestamp"
HEADER_SIGNATURE = "x-mmorch-signature"

# Order matters: it is part of the canonical string both sides compute.
CONTEXT_HEADERS: tuple[str, ...] = (
    HEADER_TENANT,
    HEADER_KEY,
    HEADER_REQUEST_ID,
    HEADER_WEIGHT,
    HEADER_MAX_INFLIGHT,
    HEADER_MAX_QUEUED,
    HEADER_PRIORITY,
    HEADER_MODEL_VERSION,
)
SIGNATURE_PREFIX = "v1="


class SignatureError(Exception):
    """The request's signature is missing, wrong or stale."""


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Who a request is for and the limits the gateway wants enforced (0 = no cap)."""

    tenant: str
    key: str
    request_id: str
    weight: int = 1
    max_inflight: int = 0
    max_queued: int = 0
    priority: int = 0
    model_version: str = ""

    def header_values(self) -> dict[str, str]:
        return {
            HEADER_TENANT: self.tenant,
            HEADER_KEY: self.key,
            HEADER_REQUEST_ID: self.request_id,
            HEADER_WEIGHT: str(self.weight),
            HEADER_MAX_INFLIGHT: str(self.max_inflight),
            HEADER_MAX_QUEUED: str(self.max_queued),
            HEADER_PRIORITY: str(self.priority),
            HEADER_MODEL_VERSION: self.model_version,
        }


def _canonical(method: str, path: str, body: bytes, timestamp: str, context: Mapping[str, str]) -> bytes:
    lines = [method.upper(), path, hashlib.sha256(body).hexdigest(), timestamp]
    lines.extend(f"{name}:{context.get(name, '')}" for name in CONTEXT_HEADERS)
    return "\n".join(lines).encode()


def _digest(secret: str, message: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    secret: str, method: str, path: str, body: bytes, ctx: TenantContext, *, timestamp: int | None = None
) -> dict[str, str]:
    """Every context header plus timestamp and signature; `path` includes the query string."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = ctx.header_values()
    headers[HEADER_TIMESTAMP] = ts
    headers[HEADER_SIGNATURE] = _digest(secret, _canonical(method, path, body, ts, headers))
    return headers


def _int_header(values: Mapping[str, str], name: str, *, minimum: int) -> int:
    raw = values.get(name, "") or "0"
    try:
        value = int(raw)
    except ValueError as exc:
        raise SignatureError(f"header {name} must be an integer") from exc
    if value < minimum:
        raise SignatureError(f"header {name} must be >= {minimum}")
    return value


def verify_signature(
    secrets: Sequence[str],
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    max_skew: int = 60,
) -> TenantContext:
    """Check the gateway's signature (any of `secrets`, for rotation) and return the signed context."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature = lowered.get(HEADER_SIGNATURE, "")
    ts_raw = lowered.get(HEADER_TIMESTAMP, "")
    if not signature or not ts_raw:
        raise SignatureError("missing signature")
    try:
        ts = int(ts_raw)
    except ValueError as exc:
        raise SignatureError("malformed timestamp") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew:
        raise SignatureError("stale signature")
    message = _canonical(method, path, body, ts_raw, lowered)
    # Check every secret so timing does not reveal which one matched.
    matched = False
    for secret in secrets:
        if secret and hmac.compare_digest(_digest(secret, message), signature):
            matched = True
    if not matched:
        raise SignatureError("wrong signature")
    weight = _int_header(lowered, HEADER_WEIGHT, minimum=0)
    return TenantContext(
        tenant=lowered.get(HEADER_TENANT, ""),
        key=lowered.get(HEADER_KEY, ""),
        request_id=lowered.get(HEADER_REQUEST_ID, ""),
        weight=max(weight, 1),
        max_inflight=_int_header(lowered, HEADER_MAX_INFLIGHT, minimum=0),
        max_queued=_int_header(lowered, HEADER_MAX_QUEUED, minimum=0),
        priority=_int_header(lowered, HEADER_PRIORITY, minimum=-(2**31)),
        model_version=lowered.get(HEADER_MODEL_VERSION, ""),
    )


class InferenceClient:
    """One per process: a keep-alive connection pool to every node, created on first use."""

    def __init__(self, *, pool_size: int = 256, keepalive_timeout: float = 30.0) -> None:
        self._pool_size = pool_size
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, keepalive_timeout=self._keepalive_timeout, ttl_dns_cache=300
            )
            # auto_decompress off and no cookie jar: bytes pass through untouched, less work per request.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        return self._session

    async def open(
        self,
        base_url: str,
        path: str,
        body: bytes,
        ctx: TenantContext,
        *,
        secret: str,
        timeout: float,  # noqa: ASYNC109
    ) -> aiohttp.ClientResponse:
        """POST a signed request; the caller reads or streams the response and releases it.

        `timeout` bounds connecting and each wait for bytes (headers, then every chunk), not the
        whole stream, so long generations that keep producing tokens are not cut off.
        """
        headers = sign_headers(secret, "POST", path, body, ctx)
        headers["content-type"] = "application/json"
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        return await self._get_session().post(
            base_url.rstrip("/") + path, data=body, headers=headers, timeout=client_timeout
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let the connector's transports close before the loop goes away.
            await asyncio.sleep(0)


def usage_pull(base_url: str, secret: str, *, after: int, limit: int = 1000, timeout: float = 10.0) -> dict[str, Any]:
    """Fetch one page of a node's usage journal (synchronous: Celery tasks and commands call it)."""
    path = "/internal/usage?" + urlencode({"after": after, "limit": limit})
    ctx = TenantContext(tenant="", key="", request_id=str(uuid.uuid4()))
    headers = sign_headers(secret, "GET", path, b"", ctx)
    request = urllib.request.Request(base_url.rstrip("/") + path, headers=headers, method="GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        page: dict[str, Any] = json.loads(response.read())
    return page


def probe_ready(base_url: str, timeout: float = 2.0) -> bool:
    """True when the node answers 200 on /ready."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/ready", timeout=timeout) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
