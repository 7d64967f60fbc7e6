"""The routes the gateway tests need (the project's urls also mount apps built elsewhere)."""

from django.urls import include, path

urlpatterns = [
    path("v1/", include("gateway.urls")),
    path("api/v1/", include("tenants.api.urls")),
    path("api/v1/", include("gateway.api.urls")),
]
