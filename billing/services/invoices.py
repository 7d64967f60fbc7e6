"""Issuing invoices from the ledger: one per tenant per closed period, numbered without gaps.

The lines' arithmetic is in `invoice_lines`, the batched run over every tenant in
`billing_runs`; here: the run's entry point and record, an invoice's states, credit notes.
An issued invoice never changes; corrections are credit notes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import (
    BillingRun,
    BillingRunOutcome,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceSequence,
    InvoiceStatus,
    LineType,
)
from billing.money import from_minor, period_label, period_parse, to_minor
from billing.services.billing_runs import (
    BillingRunObserver,
    BillingRunResult,
    billing_run_batches,
    billing_run_tenant,
    invoice_stripe_enqueue,
)
from billing.services.invoice_lines import LineDraft, UsageGroup, invoice_lines_compute
from core.audit import SYSTEM, Actor
from core.errors import Conflict, ValidationFailed
from tenants.audit import audit_record

__all__ = [
    "BillingRunResult",
    "LineDraft",
    "UsageGroup",
    "billing_run",
    "credit_note_create",
    "invoice_finalize",
    "invoice_lines_compute",
    "invoice_mark_paid",
    "invoice_mark_uncollectible",
    "invoice_payment_failed",
    "invoice_void",
]

logger = logging.getLogger(__name__)


def _number_take(prefix: str, year: int) -> str:
    """The next number for prefix and year; the row lock holds until the caller's transaction ends."""
    InvoiceSequence.objects.get_or_create(prefix=prefix, year=year)
    seq = InvoiceSequence.objects.select_for_update().get(prefix=prefix, year=year)
    seq.last_value += 1
    seq.save(update_fields=["last_value"])
    return f"{prefix}-{year}-{seq.last_value:06d}"


def invoice_finalize(*, invoice: Invoice, actor: Actor = SYSTEM, now: datetime | None = None) -> Invoice:
    """draft → open: takes the next number; from here on the invoice never changes."""
    moment = now or timezone.now()
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status != InvoiceStatus.DRAFT:
            raise Conflict(f"Invoice is {locked.status}, not draft.", code="invoice_not_draft")
        prefix = settings.BILLING_INVOICE_PREFIX
        if locked.kind == InvoiceKind.CREDIT_NOTE:
            prefix = f"{prefix}-CN"
        locked.number = _number_take(prefix, moment.year)
        locked.status = InvoiceStatus.OPEN
        locked.issued_at = moment
        locked.due_at = moment + timedelta(days=settings.BILLING_NET_DAYS)
        locked.save(update_fields=["number", "status", "issued_at", "due_at"])
        audit_record(
            actor=actor,
            tenant=locked.tenant,
            action="invoice.finalize",
            target_type="invoice",
            target_id=locked.pk,
            after={"number": locked.number, "total_minor": locked.total_minor, "currency": locked.currency},
        )
        invoice_stripe_enqueue(locked)
    return locked


def billing_run(
    *,
    period: str,
    actor: Actor = SYSTEM,
    now: datetime | None = None,
    tenant_slug: str | None = None,
    dry_run: bool = False,
    observer: BillingRunObserver | None = None,
) -> BillingRunResult:
    """Issues the invoices of a closed period; tenants already invoiced are left alone (idempotent).

    One tenant's failure does not stop the others: it is in `result.failed`, the run is recorded
    as partial, and the next run tries that tenant again. `dry_run` computes every invoice and
    writes nothing (not even the run's record). `tenant_slug` bills that one tenant.
    """
    start, end = period_parse(period)
    moment = now or timezone.now()
    if end > moment:
        raise ValidationFailed(
            f"Period {period} has not ended yet; it can be billed from {end.isoformat()}.",
            param="period",
            code="period_open",
        )
    tenant_id = billing_run_tenant(tenant_slug) if tenant_slug is not None else None
    if dry_run:
        return billing_run_batches(
            start=start, end=end, moment=moment, actor=actor, tenant_id=tenant_id, dry_run=True, observer=observer
        )
    started = timezone.now()
    try:
        result = _billing_run_issue(
            start=start, end=end, moment=moment, actor=actor, tenant_id=tenant_id, observer=observer
        )
    except Exception as exc:
        BillingRun.objects.create(
            period=period_label(start),
            started_at=started,
            finished_at=timezone.now(),
            outcome=BillingRunOutcome.FAILURE,
            error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        raise
    BillingRun.objects.create(
        period=result.period,
        started_at=started,
        finished_at=timezone.now(),
        outcome=BillingRunOutcome.PARTIAL if result.failed else BillingRunOutcome.SUCCESS,
        issued=len(result.created),
        skipped=result.skipped,
        failed=len(result.failed),
        error="; ".join(f"{f.slug}: {f.error}" for f in result.failed)[:2000],
    )
    return result


def _billing_run_issue(
    *,
    start: datetime,
    end: datetime,
    moment: datetime,
    actor: Actor,
    tenant_id: int | None = None,
    observer: BillingRunObserver | None = None,
) -> BillingRunResult:
    result = billing_run_batches(
        start=start, end=end, moment=moment, actor=actor, tenant_id=tenant_id, observer=observer
    )
    logger.info(
        "billing run %s: %d issued, %d already invoiced, %d failed",
        result.period,
        len(result.created),
        result.skipped,
        len(result.failed),
    )
    return result


def _transition(
    *, invoice: Invoice, to: str, allowed_from: set[str], actor: Actor, stamp: str | None, now: datetime | None = None
) -> Invoice:
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status == to:
            return locked
        if locked.status not in allowed_from:
            raise Conflict(f"An invoice that is {locked.status} cannot become {to}.", code="invalid_transition")
        before = locked.status
        locked.status = to
        fields = ["status"]
        if stamp:
            setattr(locked, stamp, now or timezone.now())
            fields.append(stamp)
        locked.save(update_fields=fields)
        audit_record(
            actor=actor,
            tenant=locked.tenant,
            action=f"invoice.{to}",
            target_type="invoice",
            target_id=locked.pk,
            before={"status": before},
            after={"status": to},
        )
    return locked


def invoice_mark_paid(*, invoice: Invoice, actor: Actor, paid_at: datetime | None = None) -> Invoice:
    return _transition(
        invoice=invoice,
        to=InvoiceStatus.PAID,
        allowed_from={InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE},
        actor=actor,
        stamp="paid_at",
        now=paid_at,
    )


def invoice_void(*, invoice: Invoice, actor: Actor) -> Invoice:
    return _transition(
        invoice=invoice,
        to=InvoiceStatus.VOID,
        allowed_from={InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE},
        actor=actor,
        stamp="voided_at",
    )


def invoice_mark_uncollectible(*, invoice: Invoice, actor: Actor) -> Invoice:
    return _transition(
        invoice=invoice, to=InvoiceStatus.UNCOLLECTIBLE, allowed_from={InvoiceStatus.OPEN}, actor=actor, stamp=None
    )


def invoice_payment_failed(*, invoice: Invoice, actor: Actor) -> Invoice:
    """Records a failed payment attempt; the invoice stays open."""
    Invoice.objects.filter(pk=invoice.pk).update(payment_failed_at=timezone.now())
    audit_record(
        actor=actor, tenant=invoice.tenant, action="invoice.payment_failed", target_type="invoice", target_id=invoice.pk
    )
    invoice.refresh_from_db()
    return invoice


def credit_note_create(*, invoice: Invoice, amount: Decimal | str, reason: str, actor: Actor) -> Invoice:
    """A correction to an issued invoice: a numbered credit note for up to what is left to credit."""
    try:
        value = Decimal(str(amount))
    except ArithmeticError as exc:
        raise ValidationFailed("amount must be a decimal number.", param="amount") from exc
    if not value.is_finite() or value <= 0:
        raise ValidationFailed("amount must be greater than 0.", param="amount")
    reason = (reason or "").strip()
    if not 0 < len(reason) <= 300:
        raise ValidationFailed("reason is 1-300 characters.", param="reason")
    with transaction.atomic():
        original = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if original.kind != InvoiceKind.INVOICE or original.status not in {InvoiceStatus.OPEN, InvoiceStatus.PAID}:
            raise Conflict("Only open or paid invoices can be credited.", code="invalid_transition")
        minor = to_minor(value, original.currency)
        credited = -(
            Invoice.objects.filter(credits=original)
            .exclude(status=InvoiceStatus.VOID)
            .aggregate(s=Sum("total_minor"))["s"]
            or 0
        )
        if minor <= 0 or credited + minor > original.total_minor:
            left = from_minor(original.total_minor - credited, original.currency)
            raise ValidationFailed(f"At most {left} {original.currency} can still be credited.", param="amount")
        note = Invoice.objects.create(
            tenant=original.tenant,
            kind=InvoiceKind.CREDIT_NOTE,
            credits=original,
            plan=original.plan,
            currency=original.currency,
            period_start=original.period_start,
            period_end=original.period_end,
            subtotal_minor=0,
            discount_minor=minor,
            tax_minor=0,
            total_minor=-minor,
            memo=reason,
        )
        InvoiceLine.objects.create(
            invoice=note,
            position=1,
            line_type=LineType.CREDIT,
            description=f"Credit for {original.number}: {reason}"[:300],
            amount_exact=-value,
            amount_minor=-minor,
        )
        return invoice_finalize(invoice=note, actor=actor)
