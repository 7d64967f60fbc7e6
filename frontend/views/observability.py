"""Service levels (per tenant for its members, all tenants for staff) and cost of serving (staff)."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone

from billing.exports import csv_stream
from billing.money import month_start, period_label, period_parse
from billing.selectors_cost import (
    COST_CSV_COLUMNS,
    DIMENSIONS,
    Dimension,
    cost_csv_row,
    node_hour_price,
    serving_cost_report,
    serving_cost_totals,
)
from billing.selectors_slo import slo_report
from core.errors import ValidationFailed
from frontend.access import staff_page, tenant_page
from tenants.access import TenantAccess


def _month(request: HttpRequest) -> datetime:
    """The `month` query parameter (YYYY-MM), this month when absent; ValidationFailed when bad."""
    raw = request.GET.get("month", "")
    if raw == "":
        return month_start(timezone.now())
    if len(raw) > 7:
        raise ValidationFailed("month must look like YYYY-MM.", param="month", code="invalid_period")
    return period_parse(raw, param="month")[0]


def _dimension(request: HttpRequest) -> Dimension:
    raw = request.GET.get("by", "tenant")
    for name in DIMENSIONS:
        if raw == name:
            return name
    raise ValidationFailed(f"by must be one of {', '.join(DIMENSIONS)}.", param="by", code="invalid_dimension")


def _bad_request(
    request: HttpRequest, template: str, exc: ValidationFailed, context: dict[str, object]
) -> HttpResponse:
    return render(request, template, {**context, "error": exc.message}, status=400)


@tenant_page("usage:read", section="slo")
def tenant_slo_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponseBase:
    template = "frontend/usage/slo.html"
    try:
        month = _month(request)
    except ValidationFailed as exc:
        return _bad_request(request, template, exc, {"ctx": ctx, "rows": []})
    rows = slo_report(tenant=ctx.tenant, month=month)
    return render(request, template, {"ctx": ctx, "rows": rows, "month": period_label(month)})


@staff_page
def platform_slo_view(request: HttpRequest) -> HttpResponseBase:
    template = "frontend/platform/slo.html"
    try:
        month = _month(request)
    except ValidationFailed as exc:
        return _bad_request(request, template, exc, {"rows": []})
    return render(request, template, {"rows": slo_report(tenant=None, month=month), "month": period_label(month)})


@staff_page
def platform_cost_view(request: HttpRequest) -> HttpResponseBase:
    template = "frontend/platform/cost.html"
    price, currency = node_hour_price()
    context: dict[str, object] = {"price": price, "price_currency": currency, "dimensions": DIMENSIONS}
    try:
        month, by = _month(request), _dimension(request)
    except ValidationFailed as exc:
        return _bad_request(request, template, exc, {**context, "rows": []})
    rows = serving_cost_report(month=month, by=by)
    context.update(rows=rows, total=serving_cost_totals(rows), month=period_label(month), by=by)
    return render(request, template, context)


@staff_page
def platform_cost_csv_view(request: HttpRequest) -> HttpResponseBase:
    try:
        month, by = _month(request), _dimension(request)
    except ValidationFailed as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain; charset=utf-8")
    rows = (cost_csv_row(row, by) for row in serving_cost_report(month=month, by=by))
    response = StreamingHttpResponse(csv_stream(COST_CSV_COLUMNS, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="serving-cost-{period_label(month)}-{by}.csv"'
    return response
