"""Mounted at /v1/ (the public API)."""

from django.urls import URLPattern, path

from gateway import views

urlpatterns: list[URLPattern] = [
    path("chat/completions", views.chat_completions, name="v1-chat-completions"),
    path("completions", views.completions, name="v1-completions"),
    path("models", views.models, name="v1-models"),
    path("models/<path:model>", views.model_detail, name="v1-model-detail"),
]
