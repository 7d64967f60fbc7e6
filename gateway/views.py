"""The public OpenAI-compatible API (/v1): plain Django async views, no DRF on this path."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from gateway import proxy


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    return await proxy.handle_generate(request, chat=True)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    return await proxy.handle_generate(request, chat=False)


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    return await proxy.handle_models(request)


@csrf_exempt
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    return await proxy.handle_models(request, model)


@csrf_exempt
async def unknown(request: HttpRequest, path: str) -> HttpResponse:
    return proxy.not_found(request, path)
