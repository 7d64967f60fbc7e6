"""Platform pages for staff: tenants (create, suspend, reactivate, limits, plan) and inference nodes."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from billing.selectors import tenant_plan_get
from billing.services.plans import subscription_create
from core.errors import ServiceError
from frontend.access import actor_from_request, staff_page
from frontend.forms import LimitsForm, PlanForm, TenantCreateForm, TenantStatusForm
from frontend.selectors import node_rows, plan_list_active
from frontend.views.common import is_htmx, render_invalid, service_error_to_form
from tenants import services
from tenants.models import Tenant
from tenants.selectors import LIMIT_FIELDS, TENANT_ONLY_LIMIT_FIELDS, tenant_get_by_slug, tenant_limits_get

LIMIT_FORM_FIELDS = (*LIMIT_FIELDS, *TENANT_ONLY_LIMIT_FIELDS)


@staff_page
def tenant_list_view(request: HttpRequest) -> HttpResponse:
    from tenants.selectors import tenant_list_for_user

    tenants = tenant_list_for_user(request.user)  # type: ignore[arg-type]
    return render(request, "frontend/platform/tenants.html", {"tenants": tenants})


@staff_page
def tenant_create_view(request: HttpRequest) -> HttpResponse:
    template = "frontend/platform/tenant_create.html"
    if request.method != "POST":
        return render(request, template, {"form": TenantCreateForm()})
    form = TenantCreateForm(request.POST)
    if not form.is_valid():
        return render_invalid(request, template, {"form": form})
    try:
        tenant = services.tenant_create(
            slug=form.cleaned_data["slug"],
            name=form.cleaned_data["name"],
            billing_email=form.cleaned_data["billing_email"],
            actor=actor_from_request(request),
        )
    except ServiceError as exc:
        service_error_to_form(form, exc)
        return render_invalid(request, template, {"form": form}, status=exc.status_code)
    messages.success(request, f"Tenant {tenant.slug} created.")
    return redirect("frontend:platform_tenant", tenant.slug)


def _plan_form(data: object = None, *, current: int | None = None) -> PlanForm:
    plans = [(o.plan.pk, f"{o.plan.name} ({o.plan.currency})") for o in plan_list_active()]
    return PlanForm(data, plans=plans, initial={"plan": current})  # type: ignore[arg-type]


def _detail_context(
    tenant: Tenant, limits_form: LimitsForm | None = None, plan_form: PlanForm | None = None
) -> dict[str, object]:
    limits = tenant_limits_get(tenant)
    plan = tenant_plan_get(tenant)
    return {
        "tenant": tenant,
        "plan": plan,
        "plans_offered": plan_list_active(),
        "plan_form": plan_form or _plan_form(current=plan.plan.pk if plan.plan else None),
        "limits_form": limits_form or LimitsForm(initial={name: getattr(limits, name) for name in LIMIT_FORM_FIELDS}),
    }


@staff_page
def tenant_detail_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_get_by_slug(slug)
    return render(request, "frontend/platform/tenant_detail.html", _detail_context(tenant))


@require_POST
@staff_page
def tenant_status_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_get_by_slug(slug)
    form = TenantStatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Unknown action.")
        return redirect("frontend:platform_tenant", tenant.slug)
    change = services.tenant_suspend if form.cleaned_data["action"] == "suspend" else services.tenant_reactivate
    try:
        tenant = change(tenant=tenant, actor=actor_from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Tenant {tenant.slug} is {tenant.status}.")
    return redirect("frontend:platform_tenant", tenant.slug)


@require_POST
@staff_page
def tenant_limits_view(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = tenant_get_by_slug(slug)
    template = "frontend/platform/tenant_detail.html"
    form = LimitsForm(request.POST)
    if not form.is_valid():
        return render_invalid(request, template, _detail_context(tenant, form))
    try:
        services.limits_update(tenant=tenant, actor=actor_from_request(request), **form.cleaned_data)
    except ServiceError as exc:
        service_error_to_form(form, exc)
        return render_invalid(request, template, _detail_context(tenant, form), status=exc.status_code)
    messages.success(request, f"Limits of {tenant.slug} saved.")
    return redirect("frontend:platform_tenant", tenant.slug)


@require_POST
@staff_page
def tenant_plan_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Moves the tenant to a plan from now: billing applies its limits and grants its models."""
    tenant = tenant_get_by_slug(slug)
    template = "frontend/platform/tenant_detail.html"
    form = _plan_form(request.POST)
    if not form.is_valid():
        return render_invalid(request, template, _detail_context(tenant, plan_form=form))
    plan = next(o.plan for o in plan_list_active() if o.plan.pk == form.cleaned_data["plan"])
    try:
        subscription_create(tenant=tenant, plan=plan, actor=actor_from_request(request))
    except ServiceError as exc:
        service_error_to_form(form, exc)
        return render_invalid(request, template, _detail_context(tenant, plan_form=form), status=exc.status_code)
    messages.success(request, f"{tenant.slug} is now on the {plan.name} plan.")
    return redirect("frontend:platform_tenant", tenant.slug)


@staff_page
def node_list_view(request: HttpRequest) -> HttpResponse:
    # The page polls itself with HTMX for fresh health; a poll gets only the table.
    template = "frontend/platform/_nodes_table.html" if is_htmx(request) else "frontend/platform/nodes.html"
    return render(request, template, {"nodes": node_rows()})
