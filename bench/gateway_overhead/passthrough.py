"""A bare Django async pass-through view: what any Django proxy costs before doing any work."""

from __future__ import annotations

import os

import aiohttp
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

BACKEND = os.environ.get("BENCH_BACKEND_URL", "http://127.0.0.1:18080")
_session: aiohttp.ClientSession | None = None


@csrf_exempt
async def passthrough(request: HttpRequest) -> HttpResponse:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
    async with _session.post(
        BACKEND + "/v1/chat/completions", data=request.body, headers={"content-type": "application/json"}
    ) as upstream:
        body = await upstream.read()
        return HttpResponse(body, status=upstream.status, content_type=upstream.headers.get("content-type"))
