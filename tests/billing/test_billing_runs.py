"""Batched billing runs: one tenant's failure is isolated and retried, numbering under concurrent
runs, --dry-run, --tenant, and the command's errors."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import close_old_connections
from django.db.models import Sum

from billing.models import (
    BillingRun,
    BillingRunOutcome,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceSequence,
    UsageRecord,
)
from billing.money import to_minor
from billing.services import billing_runs
from billing.services.invoices import billing_run
from core.errors import ValidationFailed
from tenants.models import AuditEvent, Tenant
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

PERIOD = "2026-03"
START = datetime(2026, 3, 1, tzinfo=UTC)


def _numbers() -> list[int]:
    numbers = Invoice.objects.filter(kind=InvoiceKind.INVOICE).values_list("number", flat=True)
    return sorted(int(str(n).rsplit("-", 1)[1]) for n in numbers)


def _billed_tenants(count: int, *, usage: bool = True) -> list[Tenant]:
    priced = plan_with_price(base_fee="10.00", input_per_1m="1.000000", output_per_1m="2.000000")
    tenants = []
    for i in range(count):
        tenant = factories.tenant()
        subscribe_directly(tenant, priced.plan)
        if usage:
            ledger_add([journal_record(tenant, prompt=1000 * (i + 1), completion=500, at=START + timedelta(days=2))])
        tenants.append(tenant)
    return tenants


def _expected_total(prompt: int, completion: int) -> int:
    return 1000 + to_minor(Decimal(prompt) / 10**6, "USD") + to_minor(Decimal(completion) * 2 / 10**6, "USD")


@pytest.mark.django_db
def test_a_tenant_whose_usage_cannot_be_billed_fails_alone_and_a_rerun_finishes_it(settings: Any) -> None:
    settings.BILLING_RUN_BATCH = 2  # the bad tenant shares a batch with good ones
    good = _billed_tenants(4)
    bad = factories.tenant()
    euros = plan_with_price(currency="EUR", input_per_1m="1.000000", output_per_1m="1.000000")
    dollars = plan_with_price(currency="USD", base_fee="10.00")
    change = START + timedelta(days=10)
    subscribe_directly(bad, euros.plan).__class__.objects.filter(tenant=bad).update(ends_at=change)
    subscribe_directly(bad, dollars.plan, starts_at=change)
    # Usage priced in EUR before the change; the period's invoice is in USD.
    ledger_add([journal_record(bad, prompt=5000, completion=5000, at=START + timedelta(days=3))])
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("billing_run", "--period", PERIOD, "--no-progress", stdout=out, stderr=err)
    assert bad.slug in str(info.value) and "next run" in str(info.value)
    assert f"failed: {bad.slug}: ValueError: usage of demo-llama priced in EUR cannot go on a USD invoice" in (
        err.getvalue()
    )
    assert "issued=4" in out.getvalue() and "failed=1" in out.getvalue()
    assert set(Invoice.objects.values_list("tenant_id", flat=True)) == {t.pk for t in good}
    assert _numbers() == [1, 2, 3, 4]
    run = BillingRun.objects.get()
    assert (run.outcome, run.issued, run.failed) == (BillingRunOutcome.PARTIAL, 4, 1)
    assert bad.slug in run.error
    # Once the data is corrected the next run invoices that tenant only, with the next number.
    UsageRecord.objects.filter(tenant=bad).update(currency="USD")
    again = billing_run(period=PERIOD)
    assert again.failed == [] and again.skipped == 4 and len(again.created) == 1
    invoice = Invoice.objects.get(tenant=bad)
    # Two lines of 0.005 each, each rounded half-up to 0.01.
    assert invoice.total_minor == 1000 + 2 * to_minor(Decimal("0.005"), "USD")
    assert _numbers() == [1, 2, 3, 4, 5]
    assert BillingRun.objects.order_by("-id").first().outcome == BillingRunOutcome.SUCCESS  # type: ignore[union-attr]


@pytest.mark.django_db
def test_a_failing_write_is_retried_tenant_by_tenant(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.BILLING_RUN_BATCH = 10
    tenants = _billed_tenants(5)
    doomed = tenants[2]
    rows = billing_runs._invoice_rows

    def broken(drafts: list[billing_runs.InvoiceDraft], **kwargs: Any) -> list[Invoice]:
        if any(d.tenant_id == doomed.pk for d in drafts):
            raise RuntimeError("disk full for this tenant")
        return rows(drafts, **kwargs)

    monkeypatch.setattr(billing_runs, "_invoice_rows", broken)
    result = billing_run(period=PERIOD)
    assert [(f.slug, f.error) for f in result.failed] == [(doomed.slug, "RuntimeError: disk full for this tenant")]
    assert len(result.created) == 4
    assert not Invoice.objects.filter(tenant=doomed).exists()
    assert _numbers() == [1, 2, 3, 4]  # the failed write took no number
    assert InvoiceSequence.objects.get().last_value == 4
    monkeypatch.setattr(billing_runs, "_invoice_rows", rows)
    rerun = billing_run(period=PERIOD)
    assert (len(rerun.created), rerun.skipped, rerun.failed) == (1, 4, [])
    assert _numbers() == [1, 2, 3, 4, 5]
    # Every invoice is its ledger, and has its lines and its audit event.
    for i, tenant in enumerate(tenants):
        invoice = Invoice.objects.get(tenant=tenant)
        assert invoice.total_minor == _expected_total(1000 * (i + 1), 500)
        assert invoice.total_minor == InvoiceLine.objects.filter(invoice=invoice).aggregate(s=Sum("amount_minor"))["s"]
        event = AuditEvent.objects.get(action="invoice.finalize", target_id=str(invoice.pk))
        assert event.after == {"number": invoice.number, "total_minor": invoice.total_minor, "currency": "USD"}


@pytest.mark.django_db(transaction=True)
@time_machine.travel(datetime(2026, 6, 15, 12, tzinfo=UTC), tick=True)
def test_concurrent_batched_runs_give_each_tenant_one_number_without_gaps(settings: Any) -> None:
    settings.BILLING_RUN_BATCH = 3
    settings.BILLING_RUN_CHUNK = 7
    tenants = _billed_tenants(20, usage=False)
    errors: list[BaseException] = []

    def run(**kwargs: Any) -> None:
        try:
            billing_run(period=PERIOD, **kwargs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run) for _ in range(3)]
    threads.append(threading.Thread(target=run, kwargs={"tenant_slug": tenants[11].slug}))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert _numbers() == list(range(1, 21))
    assert sorted(Invoice.objects.values_list("tenant_id", flat=True)) == sorted(t.pk for t in tenants)
    assert InvoiceSequence.objects.get().last_value == 20
    assert sum(BillingRun.objects.values_list("issued", flat=True)) == 20


@pytest.mark.django_db
def test_a_dry_run_lists_what_would_be_issued_and_writes_nothing() -> None:
    tenants = _billed_tenants(3)
    idle = factories.tenant()  # no plan, no usage: nothing to invoice
    before = (AuditEvent.objects.count(), InvoiceSequence.objects.count())
    out = io.StringIO()
    call_command("billing_run", "--period", PERIOD, "--dry-run", "--no-progress", stdout=out)
    text = out.getvalue()
    for i, tenant in enumerate(tenants):
        total = Decimal(_expected_total(1000 * (i + 1), 500)) / 100
        assert f"would issue: {tenant.slug} {total:.2f} USD (3 lines, plan " in text
    assert idle.slug not in text
    assert "would_issue=3" in text and "nothing written" in text
    assert not Invoice.objects.exists() and not InvoiceLine.objects.exists()
    assert not BillingRun.objects.exists()
    assert (AuditEvent.objects.count(), InvoiceSequence.objects.count()) == before
    assert billing_run(period=PERIOD, dry_run=True).planned == 3


@pytest.mark.django_db
def test_one_tenant_only() -> None:
    tenants = _billed_tenants(3)
    out = io.StringIO()
    call_command("billing_run", "--period", PERIOD, "--tenant", tenants[1].slug, "--no-progress", stdout=out)
    assert list(Invoice.objects.values_list("tenant_id", flat=True)) == [tenants[1].pk]
    assert "issued=1" in out.getvalue()
    # The others are left for the full run, which skips the one already invoiced.
    result = billing_run(period=PERIOD)
    assert (len(result.created), result.skipped) == (2, 1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--period", "2026-13", "--tenant", "x"], "'2026-13' is not a valid month."),
        (["--period", "March"], "period must look like YYYY-MM."),
        (["--period", PERIOD, "--tenant", "no-such-tenant"], "No tenant has the slug 'no-such-tenant'."),
        (["--period", PERIOD, "--tenant", "no-such-tenant", "--dry-run"], "No tenant has the slug 'no-such-tenant'."),
    ],
)
def test_bad_arguments_are_clear_errors_and_write_nothing(argv: list[str], message: str) -> None:
    _billed_tenants(1)
    with pytest.raises(CommandError) as info:
        call_command("billing_run", *argv, "--no-progress")
    assert str(info.value) == message
    with pytest.raises(ValidationFailed):
        billing_run(period=argv[1], tenant_slug=argv[3] if len(argv) > 3 else None)
    assert not Invoice.objects.exists() and not BillingRun.objects.exists()


@pytest.mark.django_db
def test_small_chunks_and_batches_bill_every_tenant_exactly_as_the_ledger_says(settings: Any) -> None:
    settings.BILLING_RUN_CHUNK = 2
    settings.BILLING_RUN_BATCH = 1
    tenants = _billed_tenants(5)
    for _ in range(2):
        factories.tenant()  # after the billed ids: a chunk with nothing to invoice
    ledger_add([journal_record(tenants[0], prompt=7, completion=9, at=START - timedelta(seconds=1))])  # February
    result = billing_run(period=PERIOD)
    assert len(result.created) == 5 and result.tenants == Tenant.objects.count()
    for i, tenant in enumerate(tenants):
        assert Invoice.objects.get(tenant=tenant).total_minor == _expected_total(1000 * (i + 1), 500)
    assert _numbers() == [1, 2, 3, 4, 5]
