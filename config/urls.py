from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core import observability

urlpatterns = [
    path("healthz", observability.healthz, name="healthz"),
    path("readyz", observability.readyz, name="readyz"),
    path("metrics", observability.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # --- tenants ---
    path("api/v1/", include("tenants.api.urls")),
    # --- gateway ---
    path("v1/", include("gateway.urls")),
    path("api/v1/", include("gateway.api.urls")),
    # --- billing ---
    path("api/v1/", include("billing.api.urls")),
    # --- frontend ---
    path("", include("frontend.urls")),
]
