"""Billing (owner and finance): invoices, invoice detail, PDF and CSV exports, the plan and prices."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from billing.exports import INVOICE_COLUMNS, LINE_COLUMNS, csv_stream, invoice_pdf, invoice_row, line_row
from billing.selectors import (
    invoice_get_in_tenant,
    invoice_lines,
    invoice_lines_for_export,
    invoice_list,
    tenant_plan_get,
)
from frontend.access import tenant_page
from tenants.access import TenantAccess


@tenant_page("billing:read", section="billing")
def billing_view(request: HttpRequest, ctx: TenantAccess) -> HttpResponse:
    return render(
        request,
        "frontend/billing/invoices.html",
        {"ctx": ctx, "plan": tenant_plan_get(ctx.tenant), "invoices": invoice_list(tenant=ctx.tenant)},
    )


@tenant_page("billing:read", section="billing")
def invoice_detail_view(request: HttpRequest, ctx: TenantAccess, invoice_id: int) -> HttpResponse:
    invoice = invoice_get_in_tenant(invoice_id, ctx.tenant)
    return render(
        request,
        "frontend/billing/invoice_detail.html",
        {"ctx": ctx, "invoice": invoice, "lines": invoice_lines(invoice)},
    )


@tenant_page("billing:read", section="billing")
def invoice_pdf_view(request: HttpRequest, ctx: TenantAccess, invoice_id: int) -> HttpResponse:
    invoice = invoice_get_in_tenant(invoice_id, ctx.tenant)
    response = HttpResponse(invoice_pdf(invoice, invoice_lines(invoice)), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{invoice.number}.pdf"'
    return response


@tenant_page("billing:read", section="billing")
def invoices_csv_view(request: HttpRequest, ctx: TenantAccess) -> StreamingHttpResponse:
    rows = (invoice_row(invoice) for invoice in invoice_list(tenant=ctx.tenant).iterator(chunk_size=500))
    response = StreamingHttpResponse(csv_stream(INVOICE_COLUMNS, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="invoices-{ctx.tenant.slug}.csv"'
    return response


@tenant_page("billing:read", section="billing")
def invoice_lines_csv_view(request: HttpRequest, ctx: TenantAccess) -> StreamingHttpResponse:
    rows = (line_row(line) for line in invoice_lines_for_export(tenant=ctx.tenant))
    response = StreamingHttpResponse(csv_stream(LINE_COLUMNS, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="invoice-lines-{ctx.tenant.slug}.csv"'
    return response
