"""Models the tenant may use; for staff, every version, the traffic split and node status."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from frontend.access import actor_from_request, staff_page, tenant_page
from frontend.selectors import node_rows
from gateway import services as gateway_services
from gateway.models import ModelVersionStatus
from gateway.selectors import model_get, model_list, model_list_for_tenant
from tenants.access import TenantAccess


@tenant_page("models:read", section="models")
def model_list_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    models = model_list_for_tenant(tenant=ctx.tenant)
    return render(
        request,
        "frontend/models/list.html",
        {"ctx": ctx, "models": models, "active": ModelVersionStatus.ACTIVE},
    )


@staff_page
def platform_model_list_view(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "frontend/platform/models.html",
        {"models": model_list(), "nodes": node_rows(), "active": ModelVersionStatus.ACTIVE},
    )


@require_POST
@staff_page
def model_traffic_view(request: HttpRequest, name: str) -> HttpResponse:
    """Sets every version's weight at once; the fields are named `weight-<version>`."""
    model = model_get(name)
    weights: dict[str, int] = {}
    for version in model.versions.all():
        raw = request.POST.get(f"weight-{version.version}", "").strip()
        if raw == "":
            continue
        if not raw.isdigit():
            messages.error(request, f"The weight of {version.version} must be a whole number >= 0.")
            return redirect("frontend:platform_models")
        weights[version.version] = int(raw)
    try:
        gateway_services.model_traffic_set(model=model, weights=weights, actor=actor_from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        split = ", ".join(f"{v} {w}" for v, w in weights.items())
        messages.success(request, f"Traffic of {model.name} set: {split}.")
    return redirect("frontend:platform_models")
