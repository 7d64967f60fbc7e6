"""Finance exports: invoices and invoice lines as CSV (streamed), one invoice as PDF (ReportLab)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from xml.sax.saxutils import escape

from django.conf import settings
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from billing.models import Invoice, InvoiceLine
from billing.money import format_minor

INVOICE_COLUMNS: tuple[str, ...] = (
    "invoice_number",
    "kind",
    "tenant_slug",
    "tenant_name",
    "period_start",
    "period_end",
    "issue_date",
    "due_date",
    "status",
    "currency",
    "subtotal",
    "discount",
    "tax",
    "total",
)
LINE_COLUMNS: tuple[str, ...] = (
    "invoice_number",
    "tenant_slug",
    "position",
    "line_type",
    "description",
    "model",
    "version",
    "token_kind",
    "units",
    "unit_price_per_1m",
    "amount",
    "currency",
)


def _date(value: object) -> str:
    return value.date().isoformat() if hasattr(value, "date") and value is not None else ""  # type: ignore[union-attr]


def invoice_row(invoice: Invoice) -> list[str]:
    c = invoice.currency
    return [
        invoice.number or "",
        invoice.kind,
        invoice.tenant.slug,
        invoice.tenant.name,
        invoice.period_start.date().isoformat(),
        # The period end is exclusive; people read the last day of the month.
        (invoice.period_end - timedelta(days=1)).date().isoformat(),
        _date(invoice.issued_at),
        _date(invoice.due_at),
        invoice.status,
        c,
        format_minor(invoice.subtotal_minor, c),
        format_minor(invoice.discount_minor, c),
        format_minor(invoice.tax_minor, c),
        format_minor(invoice.total_minor, c),
    ]


def line_row(line: InvoiceLine) -> list[str]:
    invoice = line.invoice
    return [
        invoice.number or "",
        invoice.tenant.slug,
        str(line.position),
        line.line_type,
        line.description,
        line.model_name,
        line.model_version,
        line.token_kind,
        str(line.units),
        "" if line.unit_price_per_1m is None else str(line.unit_price_per_1m),
        format_minor(line.amount_minor, invoice.currency),
        invoice.currency,
    ]


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_stream(header: Iterable[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """CSV text one row at a time, so exports of any size use constant memory."""
    writer = csv.writer(_Echo())
    yield writer.writerow(list(header))
    for row in rows:
        yield writer.writerow(row)


def _text(value: object) -> str:
    """A value as Paragraph text: ReportLab parses `<b>`, `&amp;` and the like in a Paragraph, so
    names people chose (a tenant called "A & B <Ltd>") are escaped, not interpreted."""
    return escape(str(value))


def invoice_pdf(invoice: Invoice, lines: Iterable[InvoiceLine]) -> bytes:
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer, pagesize=A4, title=f"Invoice {invoice.number}", leftMargin=18 * mm, rightMargin=18 * mm
    )
    styles = getSampleStyleSheet()
    c = invoice.currency
    title = "Credit note" if invoice.kind == "credit_note" else "Invoice"
    story: list[object] = [
        Paragraph(_text(f"{settings.BILLING_ISSUER_NAME} - {title} {invoice.number}"), styles["Title"]),
        Paragraph(_text(f"Billed to: {invoice.tenant.name} ({invoice.tenant.slug})"), styles["Normal"]),
        Paragraph(
            f"Period: {invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} (UTC, end exclusive)",
            styles["Normal"],
        ),
        Paragraph(
            _text(f"Issued: {_date(invoice.issued_at)}  Due: {_date(invoice.due_at)}  Status: {invoice.status}"),
            styles["Normal"],
        ),
        Spacer(1, 6 * mm),
    ]
    data: list[list[str]] = [["Description", "Model / version", "Units", "Price per 1M", f"Amount ({c})"]]
    for line in lines:
        model = f"{line.model_name} {line.model_version}".strip()
        price = "" if line.unit_price_per_1m is None else str(line.unit_price_per_1m)
        data.append([line.description[:70], model[:40], f"{line.units:,}", price, format_minor(line.amount_minor, c)])
    for label, minor in (
        ("Subtotal", invoice.subtotal_minor),
        ("Discount", -invoice.discount_minor),
        ("Tax", invoice.tax_minor),
        ("Total", invoice.total_minor),
    ):
        data.append(["", "", "", label, format_minor(minor, c)])
    table = Table(data, repeatRows=1, colWidths=[62 * mm, 40 * mm, 24 * mm, 24 * mm, 24 * mm])
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                ("FONTSIZE", (0, 0), (-1, -1), 8),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("ALIGN", (2, 0), (-1, -1), "RIGHT"),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
                ("LINEABOVE", (0, -4), (-1, -4), 0.5, colors.grey),
            ]
        )
    )
    story.append(table)
    story.append(Spacer(1, 6 * mm))
    story.append(Paragraph(_text(f"Total due: {format_minor(invoice.total_minor, c)} {c}"), styles["Heading2"]))
    doc.build(story)  # type: ignore[arg-type]
    return buffer.getvalue()
