"""Django admin for the registry. Edits here go around the services (no audit event), so the
management API is the audited way; the admin is for inspection and emergencies."""

from __future__ import annotations

from django.contrib import admin

from gateway.models import InferenceNode, Model, ModelGrant, ModelVersion


class ModelVersionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ModelVersion
    extra = 0
    fields = ("version", "engine", "artifact_uri", "status", "traffic_weight", "parameters")


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "owned_by", "created_at")
    search_fields = ("name",)
    inlines = [ModelVersionInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("model", "version", "engine", "status", "traffic_weight", "created_at")
    list_filter = ("status", "engine")
    search_fields = ("model__name", "version")


@admin.register(ModelGrant)
class ModelGrantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("tenant", "model", "source", "created_at")
    list_filter = ("source",)
    search_fields = ("tenant__slug", "model__name")
    autocomplete_fields = ("model",)


@admin.register(InferenceNode)
class InferenceNodeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "base_url", "state", "last_heartbeat_at", "last_error")
    list_filter = ("state",)
    search_fields = ("name", "base_url")
    filter_horizontal = ("versions",)
