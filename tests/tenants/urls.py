"""The control plane's routes that the tenants app serves, without the other apps' routes,
so this suite checks the tenants app on its own."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/", include("tenants.api.urls")),
]
