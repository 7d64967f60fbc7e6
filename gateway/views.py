"""The public OpenAI-compatible API (/v1): plain Django async views, no DRF on this path."""

from __future__ import annotations

from functools import cache

import orjson
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from gateway import proxy
from gateway.openapi import v1_document
from gateway.protocol import error_response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await proxy.handle_generate(request, chat=True)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    return await proxy.handle_generate(request, chat=False)


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    return await proxy.handle_embeddings(request)


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    return await proxy.handle_models(request)


@csrf_exempt
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    return await proxy.handle_models(request, model)


@cache
def _document_bytes() -> bytes:
    return orjson.dumps(v1_document())


@csrf_exempt
async def openapi_document(request: HttpRequest) -> HttpResponse:
    """The OpenAPI document of /v1; public, like the API's own reference."""
    if request.method not in ("GET", "HEAD"):
        return error_response(405, f"Method {request.method} is not allowed here.", code="method_not_allowed")
    body = _document_bytes()
    response = HttpResponse(body, content_type="application/json")
    response["content-length"] = str(len(body))
    return response


@csrf_exempt
async def unknown(request: HttpRequest, path: str) -> HttpResponse:
    return proxy.not_found(request, path)
