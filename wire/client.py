"""Talking to inference nodes: the pooled streaming client of the gateway, and the small calls of
Celery tasks and commands.

Kept light on purpose (stdlib + aiohttp): it sits on the gateway's hot path and must not pull
in torch, transformers or fastapi.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from wire.context import SignedContext
from wire.signing import sign_headers


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
        ctx: SignedContext,
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
    """Fetch one page of a node's usage journal as sent (read it with `JournalPage.parse`).

    Synchronous: Celery tasks and commands call it.
    """
    path = "/internal/usage?" + urlencode({"after": after, "limit": limit})
    ctx = SignedContext(tenant=0, key=None, request_id=str(uuid.uuid4()))
    headers = sign_headers(secret, "GET", path, b"", ctx)
    request = urllib.request.Request(base_url.rstrip("/") + path, headers=headers, method="GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        page: dict[str, Any] = orjson.loads(response.read())
    return page


def probe_ready(base_url: str, timeout: float = 2.0) -> bool:
    """True when the node answers 200 on /ready."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/ready", timeout=timeout) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
