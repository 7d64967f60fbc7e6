"""Registry routes of the management API, mounted at /api/v1/."""

from __future__ import annotations

from django.urls import URLPattern, path

from gateway.api import views

urlpatterns: list[URLPattern] = [
    path("tenants/<slug:slug>/models/", views.TenantModelListApi.as_view(), name="tenant-model-list"),
    path("models/", views.ModelListCreateApi.as_view(), name="model-list"),
    path("models/<str:name>/", views.ModelDetailApi.as_view(), name="model-detail"),
    path("models/<str:name>/versions/", views.ModelVersionCreateApi.as_view(), name="model-version-create"),
    path(
        "models/<str:name>/versions/<str:version>/",
        views.ModelVersionDetailApi.as_view(),
        name="model-version-detail",
    ),
    path("models/<str:name>/traffic/", views.ModelTrafficApi.as_view(), name="model-traffic"),
    path("models/<str:name>/grants/", views.ModelGrantCreateApi.as_view(), name="model-grant-create"),
    path("models/<str:name>/grants/<slug:slug>/", views.ModelGrantDeleteApi.as_view(), name="model-grant-delete"),
    path("nodes/", views.NodeListCreateApi.as_view(), name="node-list"),
    path("nodes/<str:name>/", views.NodeDetailApi.as_view(), name="node-detail"),
]
