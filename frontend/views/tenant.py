"""The landing redirect, the tenant overview and accepting an invitation."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from core.audit import client_ip, request_id_of
from core.errors import ServiceError
from frontend.access import signed_in_page, tenant_page
from frontend.forms import InvitationAcceptForm
from frontend.selectors import inference_status, overview_data
from frontend.views.common import render_invalid, service_error_to_form
from tenants import services
from tenants.access import TenantAccess
from tenants.models import User
from tenants.selectors import invitation_get_by_token, tenant_list_for_user


@signed_in_page
def home_view(request: HttpRequest) -> HttpResponse:
    """Members land on their first tenant; staff on the platform page; others see why not."""
    user = cast(User, request.user)
    if user.is_staff:
        return redirect("frontend:platform_tenants")
    first = tenant_list_for_user(user).first()
    if first is not None:
        return redirect("frontend:overview", first.slug)
    return render(request, "frontend/no_tenant.html")


@tenant_page("tenant:read", section="overview")
def overview_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    data = overview_data(ctx.tenant, own_keys_of=None if ctx.manages_all_keys else ctx.acting_user_id)
    return render(request, "frontend/overview/overview.html", {"ctx": ctx, **data})


@tenant_page("tenant:read", section="overview")
def overview_status_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    """The inference status card, polled by the overview page."""
    return render(request, "frontend/overview/_status.html", {"ctx": ctx, "status": inference_status()})


def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    """Anyone holding the emailed token; a signed-in user accepts as themselves."""
    template = "frontend/invitation_accept.html"
    user = cast(User, request.user) if request.user.is_authenticated else None
    # Shown so the invitee knows what they join; the service checks the token again on accept.
    invitation = invitation_get_by_token(token)
    if request.method != "POST":
        context = {"form": InvitationAcceptForm(), "token": token, "invitation": invitation}
        return render(request, template, context, status=200 if invitation is not None else 404)
    form = InvitationAcceptForm(request.POST)
    if not form.is_valid():
        return render_invalid(request, template, {"form": form, "token": token, "invitation": invitation})
    try:
        membership = services.invitation_accept(
            token=token,
            password=form.cleaned_data.get("password1") or None,
            full_name=form.cleaned_data.get("full_name", ""),
            user=user,
            ip=client_ip(request),
            request_id=request_id_of(request),
        )
    except ServiceError as exc:
        if exc.param == "password":
            form.add_error("password1", exc.message)
        else:
            service_error_to_form(form, exc)
        context = {"form": form, "token": token, "invitation": invitation}
        return render_invalid(request, template, context, status=exc.status_code)
    tenant = membership.tenant
    if user is not None:
        messages.success(request, f"You joined {tenant.name} as {membership.role}.")
        return redirect("frontend:overview", tenant.slug)
    messages.success(request, f"You joined {tenant.name} as {membership.role}. Sign in to continue.")
    return redirect("frontend:login")
