"""Mounted at /v1/ (the public API)."""

from django.urls import URLPattern, path, re_path

from gateway import views

urlpatterns: list[URLPattern] = [
    path("chat/completions", views.chat_completions, name="v1-chat-completions"),
    path("completions", views.completions, name="v1-completions"),
    path("embeddings", views.embeddings, name="v1-embeddings"),
    path("models", views.models, name="v1-models"),
    path("models/<path:model>", views.model_detail, name="v1-model-detail"),
    path("openapi.json", views.openapi_document, name="v1-openapi"),
    # Last: any other /v1 path gets the JSON error shape, never Django's HTML 404.
    # Any character, newlines too: `.` would leave those paths to Django's HTML 404.
    re_path(r"^(?P<path>[\s\S]*)\Z", views.unknown, name="v1-unknown"),
]
