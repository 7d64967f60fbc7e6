"""Members and invitations: invite, change role, remove, revoke an invitation (owner rules in services)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from frontend.access import actor_from_request, page_user, tenant_page
from frontend.forms import ROLE_CHOICES, InviteForm, RoleChangeForm
from frontend.views.common import render_invalid, service_error_to_form
from tenants import services
from tenants.access import TenantAccess
from tenants.models import InvitationStatus
from tenants.permissions import Role
from tenants.selectors import invitation_get_in_tenant, invitation_list, member_list, membership_get_in_tenant

TEMPLATE = "frontend/members/list.html"


def _page_context(ctx: TenantAccess, invite_form: InviteForm | None = None) -> dict[str, object]:
    # Only owners (and staff) manage owners; the services refuse it anyway, the page just
    # does not offer what would be refused.
    manages_owners = ctx.role in (None, Role.OWNER)
    role_choices = [(value, label) for value, label in ROLE_CHOICES if manages_owners or value != Role.OWNER]
    form = invite_form or InviteForm()
    form.fields["role"].choices = role_choices  # type: ignore[attr-defined]
    return {
        "ctx": ctx,
        "members": member_list(tenant=ctx.tenant),
        "invitations": invitation_list(tenant=ctx.tenant, status=InvitationStatus.PENDING),
        "can_write": ctx.can("members:write"),
        "invite_form": form,
        "role_choices": role_choices,
        "manages_owners": manages_owners,
    }


@tenant_page("members:read", section="members")
def member_list_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    return render(request, TEMPLATE, _page_context(ctx))


@require_POST
@tenant_page("members:write", section="members")
def invitation_create_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    form = InviteForm(request.POST)
    if not form.is_valid():
        return render_invalid(request, TEMPLATE, _page_context(ctx, form))
    try:
        services.invitation_create(
            tenant=ctx.tenant,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            actor=actor_from_request(request),
            acting_role=ctx.role,
            invited_by=page_user(ctx),
        )
    except ServiceError as exc:
        service_error_to_form(form, exc)
        return render_invalid(request, TEMPLATE, _page_context(ctx, form), status=exc.status_code)
    messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
    return redirect("frontend:members", ctx.tenant.slug)


@require_POST
@tenant_page("members:write", section="members")
def invitation_revoke_view(request: HttpRequest, ctx: TenantAccess, invitation_id: int) -> HttpResponse:
    invitation = invitation_get_in_tenant(invitation_id, ctx.tenant)
    try:
        services.invitation_revoke(invitation=invitation, actor=actor_from_request(request), acting_role=ctx.role)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The invitation to {invitation.email} is revoked.")
    return redirect("frontend:members", ctx.tenant.slug)


@require_POST
@tenant_page("members:write", section="members")
def member_role_change_view(request: HttpRequest, ctx: TenantAccess, membership_id: int) -> HttpResponse:
    membership = membership_get_in_tenant(membership_id, ctx.tenant)
    form = RoleChangeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the listed roles.")
        return redirect("frontend:members", ctx.tenant.slug)
    try:
        services.membership_role_change(
            membership=membership,
            role=form.cleaned_data["role"],
            actor=actor_from_request(request),
            acting_role=ctx.role,
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.email} is now {form.cleaned_data['role']}.")
    return redirect("frontend:members", ctx.tenant.slug)


@require_POST
@tenant_page("members:write", section="members")
def member_remove_view(request: HttpRequest, ctx: TenantAccess, membership_id: int) -> HttpResponse:
    membership = membership_get_in_tenant(membership_id, ctx.tenant)
    try:
        services.membership_remove(membership=membership, actor=actor_from_request(request), acting_role=ctx.role)
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.email} was removed from {ctx.tenant.name}.")
    if membership.user_id == ctx.acting_user_id and not ctx.is_staff:
        return redirect("frontend:home")
    return redirect("frontend:members", ctx.tenant.slug)
