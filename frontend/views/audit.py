"""The audit log: filters by action, actor and date; paginated; the table reloads in place with HTMX."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from frontend.access import tenant_page
from frontend.forms import AuditFilterForm
from frontend.views.common import is_htmx
from tenants.access import TenantAccess
from tenants.selectors import audit_event_list

PAGE_SIZE = 25


@tenant_page("audit:read", section="audit")
def audit_list_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    events = None
    if form.is_bound and not form.is_valid():
        status = 400
    else:
        status = 200
        data = form.cleaned_data if form.is_bound else {}
        start, end = data.get("start"), data.get("end")
        events = audit_event_list(
            tenant=ctx.tenant,
            action=data.get("action") or None,
            actor=data.get("actor") or None,
            created_after=datetime.combine(start, time.min, tzinfo=UTC) if start else None,
            # The end date is inclusive: events before the next midnight.
            created_before=datetime.combine(end, time.min, tzinfo=UTC) + timedelta(days=1) if end else None,
        )
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page")) if events is not None else None
    query = request.GET.copy()
    query.pop("page", None)
    context = {"ctx": ctx, "form": form, "page": page, "query": query.urlencode()}
    template = "frontend/audit/_results.html" if is_htmx(request) else "frontend/audit/list.html"
    return render(request, template, context, status=status)
