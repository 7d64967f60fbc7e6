"""Billing runs: every tenant's invoice for a closed period, many tenants per transaction.

Tenants are walked in id order, `BILLING_RUN_CHUNK` at a time: per chunk one aggregate over the
period's ledger rows of that tenant-id range (summed per tenant, model, version and price), one
read of their subscriptions and of the invoices already issued. So memory is bounded by the
chunk, not by the ledger or the number of tenants.

Within a chunk, tenants go in batches of `BILLING_RUN_BATCH`: every tenant's lines are computed
in Python (a tenant whose data cannot be billed is reported and left out), then one transaction
locks the number sequence, leaves out tenants another run invoiced meanwhile, takes one number
per invoice and bulk-inserts the invoices, their lines and their audit events. The numbers move
in the same transaction as the invoices, so a rollback returns them: no gaps, and concurrent runs
wait for each other on the sequence row. A batch whose write fails is written again one tenant
per transaction, so one tenant's bad data fails only that tenant; it has no invoice, and the
next run tries it again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Min, Q, Sum

from billing.models import (
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceSequence,
    InvoiceStatus,
    Plan,
    Subscription,
    UsageRecord,
)
from billing.money import default_currency, period_label
from billing.services.invoice_lines import LineDraft, UsageGroup, invoice_lines_compute, invoice_totals
from core.audit import Actor
from core.errors import ValidationFailed
from tenants.models import AuditEvent, Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantFailure:
    tenant_id: int
    slug: str
    error: str


@dataclass(slots=True)
class InvoiceDraft:
    """One tenant's invoice before it is written; `number` is set once issued."""

    tenant_id: int
    slug: str
    plan_id: int | None
    plan_name: str
    currency: str
    lines: list[LineDraft]
    totals: dict[str, int]
    number: str = ""


@dataclass(slots=True)
class BillingRunResult:
    period: str
    created: list[str] = field(default_factory=list)  # invoice numbers issued now
    skipped: int = 0  # tenants already invoiced for the period
    failed: list[TenantFailure] = field(default_factory=list)
    planned: int = 0  # a dry run: invoices it would issue
    tenants: int = 0  # tenants looked at


class BillingRunObserver(Protocol):
    """What a caller (the command's progress bar, a dry run's listing) hears as the run goes."""

    def started(self, total: int) -> None: ...

    def batch(self, drafts: list[InvoiceDraft], failed: list[TenantFailure], tenants: int) -> None: ...


class _Silent:
    def started(self, total: int) -> None:
        pass

    def batch(self, drafts: list[InvoiceDraft], failed: list[TenantFailure], tenants: int) -> None:
        pass


def billing_run_tenant(slug: str) -> int:
    """The id of the tenant a run is limited to; an unknown slug is refused."""
    tenant_id = Tenant.objects.filter(slug=slug).values_list("id", flat=True).first()
    if tenant_id is None:
        raise ValidationFailed(f"No tenant has the slug {slug!r}.", param="tenant", code="unknown_tenant")
    return int(tenant_id)


def invoice_stripe_enqueue(invoice: Invoice) -> None:
    # Credit notes are settled by staff (Stripe credit notes are not wired up).
    if settings.STRIPE_ENABLED and settings.STRIPE_API_KEY and invoice.kind == InvoiceKind.INVOICE:
        from billing.tasks import invoice_stripe_push_task

        pk = invoice.pk
        transaction.on_commit(lambda: invoice_stripe_push_task.delay(pk))


_FEW = 500  # tenants read by id rather than by id range


def _usage_groups(
    *, start: datetime, end: datetime, first: int, last: int, only: list[int] | None = None
) -> dict[int, list[UsageGroup]]:
    """One aggregate over the period's ledger rows of tenants `first`..`last`, per tenant and price."""
    rows = UsageRecord.objects.filter(
        started_at__gte=start, started_at__lt=end, tenant_id__gte=first, tenant_id__lte=last
    )
    if only is not None:
        rows = rows.filter(tenant_id__in=only)
    grouped = (
        rows.values(
            "tenant_id",
            "model_name",
            "model_version",
            "price_id",
            "input_price_per_1m",
            "output_price_per_1m",
            "currency",
        )
        .annotate(
            prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), a=Min("started_at"), z=Max("started_at")
        )
        .order_by()
    )
    result: dict[int, list[UsageGroup]] = defaultdict(list)
    for row in grouped:
        result[row["tenant_id"]].append(
            UsageGroup(
                model_name=row["model_name"],
                model_version=row["model_version"],
                price_id=row["price_id"],
                input_per_1m=row["input_price_per_1m"],
                output_per_1m=row["output_price_per_1m"],
                prompt_tokens=int(row["prompt"] or 0),
                completion_tokens=int(row["completion"] or 0),
                first_at=row["a"],
                last_at=row["z"],
                currency=row["currency"],
            )
        )
    return result


def _plan_ids(
    *, start: datetime, end: datetime, first: int, last: int, only: list[int] | None = None
) -> dict[int, int]:
    """Each tenant's plan for the period: the latest subscription that overlaps it."""
    subs = Subscription.objects.filter(tenant_id__gte=first, tenant_id__lte=last, starts_at__lt=end)
    if only is not None:
        subs = subs.filter(tenant_id__in=only)
    plan_ids: dict[int, int] = {}
    for tenant_id, plan_id in (
        subs.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=start))
        .order_by("tenant_id", "starts_at")
        .values_list("tenant_id", "plan_id")
    ):
        plan_ids[tenant_id] = plan_id
    return plan_ids


def _draft(*, tenant_id: int, slug: str, plan: Plan | None, groups: list[UsageGroup]) -> InvoiceDraft:
    currency = plan.currency if plan is not None else default_currency()
    for group in groups:
        # A zero price is worth nothing in any currency (usage before a plan began, say).
        priced = group.input_per_1m or group.output_per_1m
        if priced and group.currency and group.currency != currency:
            raise ValueError(
                f"usage of {group.model_name} priced in {group.currency} cannot go on a {currency} invoice"
            )
    lines = invoice_lines_compute(
        groups=groups,
        currency=currency,
        base_fee=plan.base_fee if plan is not None else Decimal(0),
        included_tokens=plan.included_tokens if plan is not None else 0,
        plan_name=plan.name if plan is not None else "",
    )
    return InvoiceDraft(
        tenant_id=tenant_id,
        slug=slug,
        plan_id=plan.pk if plan is not None else None,
        plan_name=plan.name if plan is not None else "",
        currency=currency,
        lines=lines,
        totals=invoice_totals(lines),
    )


def _invoice_rows(drafts: list[InvoiceDraft], *, start: datetime, end: datetime, moment: datetime) -> list[Invoice]:
    due = moment + timedelta(days=settings.BILLING_NET_DAYS)
    return [
        Invoice(
            tenant_id=d.tenant_id,
            kind=InvoiceKind.INVOICE,
            number=d.number,
            status=InvoiceStatus.OPEN,
            plan_id=d.plan_id,
            currency=d.currency,
            period_start=start,
            period_end=end,
            issued_at=moment,
            due_at=due,
            **d.totals,
        )
        for d in drafts
    ]


# An invoice line's columns besides invoice and position are a LineDraft's fields, by name.
_LINE_FIELDS = tuple(f.name for f in fields(LineDraft))
_line_values = attrgetter(*_LINE_FIELDS)
_LINE_COPY = f"COPY billing_invoiceline (invoice_id, position, {', '.join(_LINE_FIELDS)}) FROM STDIN"


def _lines_insert(rows: Iterable[tuple[int, int, LineDraft]]) -> None:
    """Writes invoice lines: COPY on PostgreSQL (a batch holds thousands), bulk_create elsewhere."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor, cursor.copy(_LINE_COPY) as copy:
            for invoice_id, position, line in rows:
                copy.write_row((invoice_id, position, *_line_values(line)))
        return
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice_id=invoice_id, position=position, **dict(zip(_LINE_FIELDS, _line_values(line), strict=True))
            )
            for invoice_id, position, line in rows
        ],
        batch_size=500,
    )


def _batch_write(
    drafts: list[InvoiceDraft], *, start: datetime, end: datetime, moment: datetime, actor: Actor
) -> tuple[list[InvoiceDraft], int]:
    """Issues a batch in one transaction; returns the drafts issued and how many were already invoiced."""
    prefix, year = settings.BILLING_INVOICE_PREFIX, moment.year
    with transaction.atomic():
        InvoiceSequence.objects.get_or_create(prefix=prefix, year=year)
        # Held until commit: the numbers below and another run's wait for them.
        seq = InvoiceSequence.objects.select_for_update().get(prefix=prefix, year=year)
        taken = set(
            Invoice.objects.filter(
                kind=InvoiceKind.INVOICE, period_start=start, tenant_id__in=[d.tenant_id for d in drafts]
            ).values_list("tenant_id", flat=True)
        )
        fresh = [d for d in drafts if d.tenant_id not in taken]
        if not fresh:
            return [], len(taken)
        for offset, draft in enumerate(fresh, start=1):
            draft.number = f"{prefix}-{year}-{seq.last_value + offset:06d}"
        invoices = Invoice.objects.bulk_create(_invoice_rows(fresh, start=start, end=end, moment=moment))
        _lines_insert(
            (invoice.pk, position, line)
            for invoice, draft in zip(invoices, fresh, strict=True)
            for position, line in enumerate(draft.lines, start=1)
        )
        # The same event `audit_record` writes for invoice.finalize, in one insert.
        AuditEvent.objects.bulk_create(
            [
                AuditEvent(
                    tenant_id=invoice.tenant_id,
                    actor_user_id=actor.user_id,
                    actor_key_id=actor.key_id,
                    actor_label=actor.label[:254],
                    action="invoice.finalize",
                    target_type="invoice",
                    target_id=str(invoice.pk),
                    after={"number": invoice.number, "total_minor": invoice.total_minor, "currency": invoice.currency},
                    ip=actor.ip or None,
                    request_id=actor.request_id[:128],
                )
                for invoice in invoices
            ],
            batch_size=5000,
        )
        seq.last_value += len(fresh)
        seq.save(update_fields=["last_value"])
        for invoice in invoices:
            invoice_stripe_enqueue(invoice)
    return fresh, len(taken)


def _batch_issue(
    drafts: list[InvoiceDraft], *, start: datetime, end: datetime, moment: datetime, actor: Actor
) -> tuple[list[InvoiceDraft], int, list[TenantFailure]]:
    try:
        issued, skipped = _batch_write(drafts, start=start, end=end, moment=moment, actor=actor)
        return issued, skipped, []
    except Exception:
        if len(drafts) == 1:
            raise
        logger.warning("billing batch of %d tenants failed; writing them one by one", len(drafts), exc_info=True)
    issued, skipped, failed = [], 0, []
    for draft in drafts:
        try:
            one, already = _batch_write([draft], start=start, end=end, moment=moment, actor=actor)
        except Exception as exc:
            draft.number = ""
            failed.append(TenantFailure(draft.tenant_id, draft.slug, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        issued += one
        skipped += already
    return issued, skipped, failed


def billing_run_batches(
    *,
    start: datetime,
    end: datetime,
    moment: datetime,
    actor: Actor,
    tenant_id: int | None = None,
    dry_run: bool = False,
    observer: BillingRunObserver | None = None,
) -> BillingRunResult:
    """Issues (or with `dry_run` only computes) the period's invoices, chunk by chunk, batch by batch."""
    watch = observer or _Silent()
    result = BillingRunResult(period=period_label(start))
    tenants = Tenant.objects.order_by("id")
    if tenant_id is not None:
        tenants = tenants.filter(id=tenant_id)
    watch.started(tenants.count())
    chunk_size = max(1, settings.BILLING_RUN_CHUNK)
    batch_size = max(1, settings.BILLING_RUN_BATCH)
    plans: dict[int, Plan] = {}
    after = 0
    while True:
        # Keyset pagination: each chunk is a range of tenant ids.
        chunk = list(tenants.filter(id__gt=after).values_list("id", "slug")[:chunk_size])
        if not chunk:
            break
        first, last = chunk[0][0], chunk[-1][0]
        after = last
        done = set(
            Invoice.objects.filter(
                kind=InvoiceKind.INVOICE, period_start=start, tenant_id__gte=first, tenant_id__lte=last
            ).values_list("tenant_id", flat=True)
        )
        open_ids = [tid for tid, _ in chunk if tid not in done]
        # A rerun reads no ledger for invoiced tenants; a few left over (a retry) are read by id.
        only = open_ids if len(open_ids) <= _FEW else None
        plan_ids = _plan_ids(start=start, end=end, first=first, last=last, only=only) if open_ids else {}
        groups = _usage_groups(start=start, end=end, first=first, last=last, only=only) if open_ids else {}
        missing = set(plan_ids.values()) - set(plans)
        if missing:
            plans.update(Plan.objects.in_bulk(missing))
        for offset in range(0, len(chunk), batch_size):
            batch = chunk[offset : offset + batch_size]
            drafts: list[InvoiceDraft] = []
            failed: list[TenantFailure] = []
            for tid, slug in batch:
                if tid in done:
                    result.skipped += 1
                    continue
                if tid not in plan_ids and tid not in groups:
                    continue  # no plan and no usage: nothing to invoice
                try:
                    plan = plans[plan_ids[tid]] if tid in plan_ids else None
                    drafts.append(_draft(tenant_id=tid, slug=slug, plan=plan, groups=groups.get(tid, [])))
                except Exception as exc:
                    failed.append(TenantFailure(tid, slug, f"{type(exc).__name__}: {exc}"[:500]))
            if dry_run:
                result.planned += len(drafts)
            elif drafts:
                issued, skipped, write_failed = _batch_issue(drafts, start=start, end=end, moment=moment, actor=actor)
                result.created += [d.number for d in issued]
                result.skipped += skipped
                failed += write_failed
                drafts = issued
            for failure in failed:
                logger.error("billing run %s: tenant %s failed: %s", result.period, failure.slug, failure.error)
            result.failed += failed
            result.tenants += len(batch)
            watch.batch(drafts, failed, len(batch))
    return result
