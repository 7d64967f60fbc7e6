"""The control plane's ASGI application with a lean lane for the public API.

`/v1/*` goes to `GatewayASGIHandler`: Django's own ASGI handler, URL routing and async views,
but only async-capable middleware (GATEWAY_MIDDLEWARE: request ids and metrics) and no
`request_started` / `request_finished` signals. Both of those would move every request through
a worker thread (sync-only middleware such as WhiteNoise, and the database-connection signal
receivers), which costs more than the whole gateway; measured in bench/gateway_overhead. The
/v1 views touch no database on the event loop, so the connection housekeeping is not needed
there (database work runs in worker threads that clean up after themselves).

Everything else (dashboard, management API, admin, health) takes Django's full stack.
Serve with: uvicorn gateway.asgi:application --http httptools --loop uvloop
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.exceptions import ImproperlyConfigured, RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from core.tracing import asgi_traced, control_plane_tracing  # noqa: E402

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class GatewayASGIHandler(ASGIHandler):
    """Django's ASGI handler without thread hops (see the module docstring)."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for path in reversed(settings.GATEWAY_MIDDLEWARE):
            middleware = import_string(path)
            if not getattr(middleware, "async_capable", False):
                raise ImproperlyConfigured(f"{path} must be async-capable to serve /v1")
            instance = middleware(handler)
            if not iscoroutinefunction(instance):
                raise ImproperlyConfigured(f"{path} did not adapt to async")
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            assert error_response is not None
            await self.send_response(error_response, send)
            return

        async def process_request() -> None:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away while we sent
                await self.send_response(response, send)

        # A client that disconnects cancels the view (and so aborts the upstream request).
        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, worker):
            if task.done():
                with contextlib.suppress(RequestAborted, asyncio.CancelledError):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task
        body_file.close()


def _prefixes() -> tuple[str, ...]:
    return tuple(settings.GATEWAY_LEAN_PATH_PREFIXES)


control_plane_tracing()  # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; before the middleware loads
django_application = get_asgi_application()
gateway_application = asgi_traced(GatewayASGIHandler())
_lean = _prefixes()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"].startswith(_lean):
        await gateway_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)
