from django.urls import include, path

from bench.gateway_overhead.passthrough import passthrough
from core.observability import metrics

urlpatterns = [
    path("v1/", include("gateway.urls")),
    # The floor: a bare async pass-through (aiohttp upstream, no authentication, no quotas), once
    # through Django's full stack (the project's middleware) and once through the gateway's lane.
    path("bare/v1/chat/completions", passthrough),
    path("lean/bare/v1/chat/completions", passthrough),
    path("metrics", metrics),
]
