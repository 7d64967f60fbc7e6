"""Usage: date range, model, key, end-user and tag filters, grouping, chart, table, CSV download."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone

from billing.exports import csv_stream
from billing.usage_attribution import AttributionQuery
from frontend.access import tenant_page
from frontend.forms import UsageFilterForm
from frontend.selectors import UsageRow, plan_currency, tenant_model_names, usage_report
from frontend.views.common import is_htmx
from tenants.access import TenantAccess
from tenants.selectors import key_list

CSV_COLUMNS = ("bucket_start", "model", "key", "requests", "input_tokens", "output_tokens", "cost", "currency")


def _csv_lines(rows: list[UsageRow], currency: str, group_header: str) -> Iterator[str]:
    if not group_header:
        return csv_stream(
            CSV_COLUMNS,
            (
                [
                    r.start.isoformat(),
                    r.model,
                    r.key_label,
                    r.requests,
                    r.input_tokens,
                    r.output_tokens,
                    r.cost,
                    currency,
                ]
                for r in rows
            ),
        )
    # Grouped by end user or tag: that column in place of the key's.
    column = "end_user" if group_header == "End user" else group_header.removeprefix("Tag ")
    columns = tuple(column if c == "key" else c for c in CSV_COLUMNS)
    return csv_stream(
        columns,
        (
            [r.start.isoformat(), r.model, r.group, r.requests, r.input_tokens, r.output_tokens, r.cost, currency]
            for r in rows
        ),
    )


def _attribution(data: dict[str, Any]) -> AttributionQuery:
    tag = data.get("tag")
    return AttributionQuery(
        group_user=data.get("group") == "user",
        group_tags=(data["group_tag"],) if data.get("group") == "tag" else (),
        users=(data["end_user"],) if data.get("end_user") else None,
        tags=dict([tag]) if tag else {},
    )


def _group_header(data: dict[str, Any]) -> str:
    """The table's grouping column: "" for model and key."""
    if data.get("group") == "user":
        return "End user"
    if data.get("group") == "tag":
        return f"Tag metadata.{data['group_tag']}"
    return ""


@tenant_page("usage:read", section="usage")
def usage_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponseBase:
    # Developers may filter by (and see the names of) only the keys they created.
    keys = key_list(tenant=ctx.tenant, created_by_id=None if ctx.manages_all_keys else ctx.acting_user_id)
    key_labels = {k.pk: f"{k.name} ({k.masked})" for k in keys}
    today = timezone.now().date()
    params = request.GET.copy()
    params.setdefault("start", (today - timedelta(days=29)).isoformat())
    params.setdefault("end", today.isoformat())
    params.setdefault("bucket", "day")
    form = UsageFilterForm(
        params, models=tenant_model_names(ctx.tenant), keys=sorted(key_labels.items(), key=lambda kv: kv[1])
    )
    currency = plan_currency(ctx.tenant)
    context: dict[str, object] = {"ctx": ctx, "form": form, "currency": currency}
    if not form.is_valid():
        template = "frontend/usage/_results.html" if is_htmx(request) else "frontend/usage/usage.html"
        return render(request, template, context, status=400)
    data = form.cleaned_data
    start = datetime.combine(data["start"], time.min, tzinfo=UTC)
    end = datetime.combine(data["end"], time.min, tzinfo=UTC) + timedelta(days=1)
    rows, chart = usage_report(
        ctx.tenant,
        start=start,
        end=end,
        bucket=data["bucket"],
        model=data["model"] or None,
        key_id=data["key"],
        key_labels=key_labels,
        attribution=_attribution(data),
    )
    group_header = _group_header(data)
    if request.GET.get("format") == "csv":
        lines = _csv_lines(rows, currency, group_header)
        response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        filename = f"usage-{ctx.tenant.slug}-{data['start']}-{data['end']}.csv"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
    query = params.copy()
    query["format"] = "csv"
    context.update(
        {
            "rows": rows,
            "chart": chart,
            "group_header": group_header,
            "csv_query": query.urlencode(),
            "totals": {
                "requests": sum(r.requests for r in rows),
                "input_tokens": sum(r.input_tokens for r in rows),
                "output_tokens": sum(r.output_tokens for r in rows),
                "cost": sum((r.cost for r in rows), Decimal(0)),
            },
        }
    )
    template = "frontend/usage/_results.html" if is_htmx(request) else "frontend/usage/usage.html"
    return render(request, template, context)
