"""API keys: list, create (secret shown once), revoke, rotate. Developers see only their own."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from frontend.access import actor_from_request, page_user, tenant_page
from frontend.forms import KeyCreateForm, KeyRotateForm
from frontend.selectors import tenant_model_names
from frontend.views.common import render_invalid, service_error_to_form
from tenants import services
from tenants.access import TenantAccess
from tenants.models import APIKey
from tenants.selectors import key_get_in_tenant, key_list


def _owner_filter(ctx: TenantAccess) -> int | None:
    """Roles that do not manage every key are limited to keys they created."""
    return None if ctx.manages_all_keys else ctx.acting_user_id


def _key_get(ctx: TenantAccess, key_id: int) -> APIKey:
    return key_get_in_tenant(key_id, ctx.tenant, created_by_id=_owner_filter(ctx))


def _show_secret(request: HttpRequest, ctx: TenantAccess, key: APIKey, raw: str, *, rotated: bool) -> HttpResponse:
    """The only page that ever shows a secret; never cached, never shown again."""
    response = render(request, "frontend/keys/secret.html", {"ctx": ctx, "key": key, "secret": raw, "rotated": rotated})
    response["Cache-Control"] = "no-store"
    return response


def _create_form(ctx: TenantAccess, data: object = None) -> KeyCreateForm:
    return KeyCreateForm(
        data,  # type: ignore[arg-type]
        scopes=sorted(ctx.scopes),
        models=tenant_model_names(ctx.tenant),
    )


@tenant_page("keys:read", section="keys")
def key_list_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    keys = key_list(tenant=ctx.tenant, created_by_id=_owner_filter(ctx))
    return render(
        request,
        "frontend/keys/list.html",
        {"ctx": ctx, "keys": keys, "can_write": ctx.can("keys:write"), "rotate_form": KeyRotateForm()},
    )


@tenant_page("keys:write", section="keys")
def key_create_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    template = "frontend/keys/create.html"
    if request.method != "POST":
        return render(request, template, {"ctx": ctx, "form": _create_form(ctx)})
    form = _create_form(ctx, request.POST)
    if not form.is_valid():
        return render_invalid(request, template, {"ctx": ctx, "form": form})
    data = form.cleaned_data
    expires_at = datetime.combine(data["expires_on"], time.min, tzinfo=UTC) if data["expires_on"] else None
    try:
        key, raw = services.key_create(
            tenant=ctx.tenant,
            created_by=page_user(ctx),
            name=data["name"],
            kind=data["kind"],
            scopes=data["scopes"] or None,
            allowed_models=data["allowed_models"],
            expires_at=expires_at,
            actor=actor_from_request(request),
        )
    except ServiceError as exc:
        service_error_to_form(form, exc)
        return render_invalid(request, template, {"ctx": ctx, "form": form}, status=exc.status_code)
    return _show_secret(request, ctx, key, raw, rotated=False)


@require_POST
@tenant_page("keys:write", section="keys")
def key_revoke_view(request: HttpRequest, ctx: TenantAccess, key_id: int) -> HttpResponse:
    key = _key_get(ctx, key_id)
    try:
        services.key_revoke(
            key=key, actor=actor_from_request(request), acting_role=ctx.role, acting_user_id=ctx.acting_user_id
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Key {key.name} ({key.masked}) is revoked.")
    return redirect("frontend:keys", ctx.tenant.slug)


@require_POST
@tenant_page("keys:write", section="keys")
def key_rotate_view(request: HttpRequest, ctx: TenantAccess, key_id: int) -> HttpResponse:
    key = _key_get(ctx, key_id)
    form = KeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose how long the old secret keeps working.")
        return redirect("frontend:keys", ctx.tenant.slug)
    try:
        new_key, raw = services.key_rotate(
            key=key,
            actor=actor_from_request(request),
            grace=timedelta(seconds=form.cleaned_data["grace_seconds"]),
            acting_role=ctx.role,
            acting_user_id=ctx.acting_user_id,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("frontend:keys", ctx.tenant.slug)
    return _show_secret(request, ctx, new_key, raw, rotated=True)
