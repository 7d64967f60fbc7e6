"""Issuing invoices from the ledger: one per tenant per closed period, numbered without gaps.

Lines: one per model, version, token kind and price (a price change mid-period splits a
model's usage into lines), the plan's base fee, and the included allowance as a discount.
Each line is rounded half-up to the currency's minor unit; totals are sums of rounded lines.
An issued invoice never changes; corrections are credit notes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Min, Q, Sum
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
    Plan,
    Subscription,
    TokenKind,
    UsageRecord,
)
from billing.money import from_minor, period_label, period_parse, to_minor, token_cost
from core.audit import SYSTEM, Actor
from core.errors import Conflict, ValidationFailed
from tenants.audit import audit_record
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Ledger sums of one tenant for one model, version and price within a period."""

    model_name: str
    model_version: str
    price_id: int | None
    input_per_1m: Decimal
    output_per_1m: Decimal
    prompt_tokens: int
    completion_tokens: int
    first_at: datetime
    last_at: datetime


@dataclass(slots=True)
class LineDraft:
    line_type: str
    description: str
    amount_exact: Decimal
    amount_minor: int
    model_name: str = ""
    model_version: str = ""
    token_kind: str = ""
    units: int = 1
    unit_price_per_1m: Decimal | None = None
    usage_start: datetime | None = None
    usage_end: datetime | None = None


@dataclass(slots=True)
class BillingRunResult:
    period: str
    created: list[str] = field(default_factory=list)  # invoice numbers issued now
    skipped: int = 0  # tenants already invoiced for the period


def invoice_lines_compute(
    *, groups: list[UsageGroup], currency: str, base_fee: Decimal, included_tokens: int, plan_name: str = ""
) -> list[LineDraft]:
    """The lines of an invoice: pure arithmetic, no database (tests drive it directly)."""
    usage: list[LineDraft] = []
    ordered = sorted(groups, key=lambda g: (g.model_name, g.model_version, g.first_at, g.price_id or 0))
    for group in ordered:
        for kind, tokens, price in (
            (TokenKind.INPUT.value, group.prompt_tokens, group.input_per_1m),
            (TokenKind.OUTPUT.value, group.completion_tokens, group.output_per_1m),
        ):
            if tokens <= 0:
                continue
            exact = token_cost(tokens, price)
            usage.append(
                LineDraft(
                    line_type=LineType.USAGE.value,
                    description=f"{group.model_name} {kind} tokens",
                    model_name=group.model_name,
                    model_version=group.model_version,
                    token_kind=kind,
                    units=tokens,
                    unit_price_per_1m=price,
                    usage_start=group.first_at,
                    usage_end=group.last_at,
                    amount_exact=exact,
                    amount_minor=to_minor(exact, currency),
                )
            )
    lines: list[LineDraft] = []
    if base_fee > 0:
        lines.append(
            LineDraft(
                line_type=LineType.BASE_FEE.value,
                description=f"{plan_name} monthly base fee".strip(),
                amount_exact=base_fee,
                amount_minor=to_minor(base_fee, currency),
            )
        )
    lines.extend(usage)
    if included_tokens > 0 and usage:
        # The allowance covers usage lines in line order, at each line's own price.
        remaining = included_tokens
        covered_tokens = 0
        value = Decimal(0)
        for line in usage:
            if remaining <= 0:
                break
            take = min(remaining, line.units)
            remaining -= take
            covered_tokens += take
            value += token_cost(take, line.unit_price_per_1m or Decimal(0))
        usage_minor = sum(line.amount_minor for line in usage)
        discount_minor = min(to_minor(value, currency), usage_minor)
        if discount_minor > 0:
            lines.append(
                LineDraft(
                    line_type=LineType.DISCOUNT.value,
                    description=f"Included allowance: {covered_tokens:,} of {included_tokens:,} tokens",
                    units=covered_tokens,
                    amount_exact=-value,
                    amount_minor=-discount_minor,
                )
            )
    return lines


def _totals(lines: list[LineDraft]) -> dict[str, int]:
    subtotal = sum(line.amount_minor for line in lines if line.amount_minor > 0)
    discount = -sum(line.amount_minor for line in lines if line.amount_minor < 0)
    tax = 0
    return {
        "subtotal_minor": subtotal,
        "discount_minor": discount,
        "tax_minor": tax,
        "total_minor": subtotal - discount + tax,
    }


def _usage_groups(*, start: datetime, end: datetime, tenant_id: int | None = None) -> dict[int, list[UsageGroup]]:
    """One aggregate query over the period's ledger rows, grouped per tenant and price."""
    rows = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    if tenant_id is not None:
        rows = rows.filter(tenant_id=tenant_id)
    grouped = (
        rows.values("tenant_id", "model_name", "model_version", "price_id", "input_price_per_1m", "output_price_per_1m")
        .annotate(
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            first=Min("started_at"),
            last=Max("started_at"),
        )
        .order_by()
    )
    result: dict[int, list[UsageGroup]] = defaultdict(list)
    for row in grouped.iterator(chunk_size=10_000):
        result[row["tenant_id"]].append(
            UsageGroup(
                model_name=row["model_name"],
                model_version=row["model_version"],
                price_id=row["price_id"],
                input_per_1m=row["input_price_per_1m"],
                output_per_1m=row["output_price_per_1m"],
                prompt_tokens=int(row["prompt"] or 0),
                completion_tokens=int(row["completion"] or 0),
                first_at=row["first"],
                last_at=row["last"],
            )
        )
    return result


def _plans_for_period(*, start: datetime, end: datetime) -> dict[int, Plan]:
    """Each tenant's plan for the period: the latest subscription that overlaps it."""
    plans: dict[int, Plan] = {}
    for sub in (
        Subscription.objects.filter(starts_at__lt=end)
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=start))
        .select_related("plan")
        .order_by("tenant_id", "starts_at")
    ):
        plans[sub.tenant_id] = sub.plan
    return plans


def _number_take(prefix: str, year: int) -> str:
    """The next number for prefix and year; the row lock holds until the caller's transaction ends."""
    InvoiceSequence.objects.get_or_create(prefix=prefix, year=year)
    seq = InvoiceSequence.objects.select_for_update().get(prefix=prefix, year=year)
    seq.last_value += 1
    seq.save(update_fields=["last_value"])
    return f"{prefix}-{year}-{seq.last_value:06d}"


def _enqueue_stripe(invoice: Invoice) -> None:
    # Credit notes are settled by staff (Stripe credit notes are not wired up).
    if settings.STRIPE_ENABLED and settings.STRIPE_API_KEY and invoice.kind == InvoiceKind.INVOICE:
        from billing.tasks import invoice_stripe_push_task

        transaction.on_commit(lambda: invoice_stripe_push_task.delay(invoice.pk))


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
        _enqueue_stripe(locked)
    return locked


def _invoice_create(
    *, tenant_id: int, start: datetime, end: datetime, plan: Plan | None, groups: list[UsageGroup], actor: Actor
) -> Invoice:
    currency = plan.currency if plan is not None else settings.BILLING_DEFAULT_CURRENCY
    lines = invoice_lines_compute(
        groups=groups,
        currency=currency,
        base_fee=plan.base_fee if plan is not None else Decimal(0),
        included_tokens=plan.included_tokens if plan is not None else 0,
        plan_name=plan.name if plan is not None else "",
    )
    invoice = Invoice.objects.create(
        tenant_id=tenant_id, plan=plan, currency=currency, period_start=start, period_end=end, **_totals(lines)
    )
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=invoice,
                position=index,
                line_type=line.line_type,
                description=line.description,
                model_name=line.model_name,
                model_version=line.model_version,
                token_kind=line.token_kind,
                units=line.units,
                unit_price_per_1m=line.unit_price_per_1m,
                usage_start=line.usage_start,
                usage_end=line.usage_end,
                amount_exact=line.amount_exact,
                amount_minor=line.amount_minor,
            )
            for index, line in enumerate(lines, start=1)
        ]
    )
    return invoice


def billing_run(*, period: str, actor: Actor = SYSTEM, now: datetime | None = None) -> BillingRunResult:
    """Issues the invoices of a closed period; tenants already invoiced are left alone (idempotent)."""
    start, end = period_parse(period)
    moment = now or timezone.now()
    if end > moment:
        raise ValidationFailed(
            f"Period {period} has not ended yet; it can be billed from {end.isoformat()}.",
            param="period",
            code="period_open",
        )
    started = timezone.now()
    try:
        result = _billing_run_issue(start=start, end=end, moment=moment, actor=actor)
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
        outcome=BillingRunOutcome.SUCCESS,
        issued=len(result.created),
        skipped=result.skipped,
    )
    return result


def _billing_run_issue(*, start: datetime, end: datetime, moment: datetime, actor: Actor) -> BillingRunResult:
    result = BillingRunResult(period=period_label(start))
    done = set(Invoice.objects.filter(kind=InvoiceKind.INVOICE, period_start=start).values_list("tenant_id", flat=True))
    plans = _plans_for_period(start=start, end=end)
    groups = _usage_groups(start=start, end=end)
    tenant_ids = sorted(set(plans) | set(groups))
    existing = set(Tenant.objects.filter(id__in=tenant_ids).values_list("id", flat=True))
    for tenant_id in tenant_ids:
        if tenant_id in done or tenant_id not in existing:
            result.skipped += tenant_id in done
            continue
        try:
            with transaction.atomic():
                invoice = _invoice_create(
                    tenant_id=tenant_id,
                    start=start,
                    end=end,
                    plan=plans.get(tenant_id),
                    groups=groups.get(tenant_id, []),
                    actor=actor,
                )
                invoice = invoice_finalize(invoice=invoice, actor=actor, now=moment)
        except IntegrityError:
            # Another run invoiced this tenant in the meantime.
            result.skipped += 1
            continue
        result.created.append(invoice.number or "")
    logger.info("billing run %s: %d issued, %d already invoiced", result.period, len(result.created), result.skipped)
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
