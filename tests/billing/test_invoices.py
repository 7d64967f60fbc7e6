"""Invoices: arithmetic (hypothesis), billing_run idempotency, price splits, numbering, states."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import Invoice, InvoiceKind, InvoiceLine, InvoiceSequence, InvoiceStatus, LineType
from billing.money import to_minor
from billing.services.invoices import (
    UsageGroup,
    billing_run,
    credit_note_create,
    invoice_lines_compute,
    invoice_mark_paid,
    invoice_void,
)
from core.errors import Conflict, ValidationFailed
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)

prices = st.decimals(min_value=Decimal(0), max_value=Decimal("250"), places=6)
groups = st.lists(
    st.builds(
        UsageGroup,
        model_name=st.sampled_from(["demo-llama", "big-model", "tiny"]),
        model_version=st.sampled_from(["v1", "v2"]),
        price_id=st.integers(1, 50),
        input_per_1m=prices,
        output_per_1m=prices,
        prompt_tokens=st.integers(0, 50_000_000),
        completion_tokens=st.integers(0, 50_000_000),
        first_at=st.just(PERIOD_START),
        last_at=st.just(PERIOD_START + timedelta(days=3)),
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    groups=groups,
    base_fee=st.decimals(min_value=Decimal(0), max_value=Decimal(500), places=2),
    included=st.integers(0, 80_000_000),
    currency=st.sampled_from(["USD", "EUR", "JPY", "KWD"]),
)
def test_total_is_the_sum_of_half_up_rounded_lines(
    groups: list[UsageGroup], base_fee: Decimal, included: int, currency: str
) -> None:
    lines = invoice_lines_compute(groups=groups, currency=currency, base_fee=base_fee, included_tokens=included)
    exponent = {"JPY": 0, "KWD": 3}.get(currency, 2)
    for line in lines:
        if line.line_type == LineType.DISCOUNT:
            continue
        expected = (line.amount_exact * Decimal(10) ** exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        assert line.amount_minor == int(expected)
    usage = [line for line in lines if line.line_type == LineType.USAGE]
    # One line per group and token kind that has tokens; units add up to the usage.
    assert sum(line.units for line in usage) == sum(g.prompt_tokens + g.completion_tokens for g in groups)
    assert len(usage) == sum((g.prompt_tokens > 0) + (g.completion_tokens > 0) for g in groups)
    discounts = [line for line in lines if line.line_type == LineType.DISCOUNT]
    assert len(discounts) <= 1
    if discounts:
        # The allowance never pays more than the usage it covers.
        assert 0 < -discounts[0].amount_minor <= sum(line.amount_minor for line in usage)
        assert discounts[0].units == min(included, sum(line.units for line in usage))


@pytest.mark.django_db
def test_billing_run_issues_one_invoice_per_tenant_and_a_rerun_is_a_no_op() -> None:
    tenant = factories.tenant()
    idle = factories.tenant()
    priced = plan_with_price(base_fee="49.00", included_tokens=1_000_000, input_per_1m="0.5", output_per_1m="1.5")
    subscribe_directly(tenant, priced.plan)
    subscribe_directly(idle, priced.plan)
    ledger_add(
        [
            journal_record(tenant, prompt=700_000, completion=300_000, at=PERIOD_START + timedelta(days=d))
            for d in (1, 2)
        ]
        + [journal_record(tenant, prompt=999, completion=999, at=PERIOD_START - timedelta(seconds=1))]  # February
    )
    first = billing_run(period="2026-03")
    assert len(first.created) == 2
    invoice = Invoice.objects.get(tenant=tenant, kind=InvoiceKind.INVOICE)
    lines = list(InvoiceLine.objects.filter(invoice=invoice))
    by_type = {(line.line_type, line.token_kind): line for line in lines}
    assert by_type[("usage", "input")].units == 1_400_000
    assert by_type[("usage", "input")].amount_minor == 70  # 1.4M x 0.50
    assert by_type[("usage", "output")].amount_minor == 90  # 0.6M x 1.50
    assert by_type[("base_fee", "")].amount_minor == 4900
    # 1M included tokens cover the 1.4M input tokens first: 1M x 0.50 = 0.50.
    assert by_type[("discount", "")].amount_minor == -50
    assert invoice.total_minor == sum(line.amount_minor for line in lines) == 4900 + 70 + 90 - 50
    assert (invoice.subtotal_minor, invoice.discount_minor, invoice.tax_minor) == (5060, 50, 0)
    assert invoice.status == InvoiceStatus.OPEN
    assert invoice.number is not None and invoice.number.startswith("MMO-")
    snapshot = list(Invoice.objects.order_by("id").values())
    line_snapshot = list(InvoiceLine.objects.order_by("id").values())
    second = billing_run(period="2026-03")
    assert second.created == [] and second.skipped == 2
    call_command("billing_run", "--period", "2026-03")
    assert list(Invoice.objects.order_by("id").values()) == snapshot
    assert list(InvoiceLine.objects.order_by("id").values()) == line_snapshot


@pytest.mark.django_db
def test_a_price_change_mid_period_splits_the_lines() -> None:
    tenant = factories.tenant()
    change = datetime(2026, 3, 16, tzinfo=UTC)
    priced = plan_with_price(input_per_1m="1.000000", output_per_1m="2.000000")
    priced.plan.prices.create(
        model_name="demo-llama", input_per_1m=Decimal("1.333333"), output_per_1m=Decimal("2.5"), effective_from=change
    )
    subscribe_directly(tenant, priced.plan)
    ledger_add(
        [journal_record(tenant, prompt=1000, completion=500, at=change - timedelta(days=1)) for _ in range(3)]
        + [journal_record(tenant, prompt=2000, completion=100, at=change + timedelta(hours=h)) for h in range(4)]
    )
    billing_run(period="2026-03")
    invoice = Invoice.objects.get(tenant=tenant)
    usage = list(InvoiceLine.objects.filter(invoice=invoice, line_type=LineType.USAGE).order_by("position"))
    assert [(line.token_kind, line.units, str(line.unit_price_per_1m)) for line in usage] == [
        ("input", 3000, "1.000000"),
        ("output", 1500, "2.000000"),
        ("input", 8000, "1.333333"),
        ("output", 400, "2.500000"),
    ]
    assert usage[0].usage_end < change <= usage[2].usage_start
    exact = [
        Decimal(3000) * 1 / 10**6,
        Decimal(1500) * 2 / 10**6,
        Decimal(8000) * Decimal("1.333333") / 10**6,
        Decimal(400) * Decimal("2.5") / 10**6,
    ]
    assert [line.amount_minor for line in usage] == [to_minor(x, "USD") for x in exact]
    assert invoice.total_minor == sum(to_minor(x, "USD") for x in exact)


@pytest.mark.django_db
@pytest.mark.parametrize("period", ["2026-13", "2026-3", "26-03", "", "2026-03-01", "abcd-ef", "1999-12"])
def test_bad_periods_are_refused_and_write_nothing(period: str) -> None:
    tenant = factories.tenant()
    subscribe_directly(tenant, plan_with_price().plan)
    with pytest.raises(ValidationFailed) as info:
        billing_run(period=period)
    assert info.value.param == "period"
    with pytest.raises(CommandError):
        call_command("billing_run", "--period", period)
    assert not Invoice.objects.exists() and not InvoiceSequence.objects.exists()


@pytest.mark.django_db
# The last second of a month: its period is still open.
@time_machine.travel(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), tick=False)
def test_an_open_period_cannot_be_billed() -> None:
    tenant = factories.tenant()
    subscribe_directly(tenant, plan_with_price().plan)
    now = datetime.now(UTC)
    with pytest.raises(ValidationFailed) as info:
        billing_run(period=f"{now.year:04d}-{now.month:02d}")
    assert info.value.code == "period_open"
    assert not Invoice.objects.exists()


@pytest.mark.django_db(transaction=True)
# Invoice numbers carry the year they are issued in: a fixed day, not whatever today is.
@time_machine.travel(datetime(2026, 6, 15, 12, tzinfo=UTC), tick=True)
def test_concurrent_runs_number_invoices_without_gaps_or_doubles() -> None:
    priced = plan_with_price(base_fee="10.00")
    tenants = [factories.tenant() for _ in range(12)]
    for tenant in tenants:
        subscribe_directly(tenant, priced.plan)
    errors: list[BaseException] = []

    def run(period: str) -> None:
        try:
            billing_run(period=period)
        except BaseException as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=run, args=(p,)) for p in ("2026-01", "2026-01", "2026-02", "2026-02")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert len(numbers) == 24 == Invoice.objects.count()
    year = datetime.now(UTC).year
    assert numbers == [f"MMO-{year}-{n:06d}" for n in range(1, 25)]


@pytest.mark.django_db
def test_states_and_credit_notes() -> None:
    tenant = factories.tenant()
    priced = plan_with_price(base_fee="100.00")
    subscribe_directly(tenant, priced.plan)
    billing_run(period="2026-01")
    invoice = Invoice.objects.get(tenant=tenant)
    actor: Any = factories.SYSTEM
    note = credit_note_create(invoice=invoice, amount="30.005", reason="service credit", actor=actor)
    assert note.kind == InvoiceKind.CREDIT_NOTE and note.credits_id == invoice.pk
    assert note.total_minor == -3001  # half-up
    assert note.number is not None and "-CN-" in note.number
    with pytest.raises(ValidationFailed):
        credit_note_create(invoice=invoice, amount="70.00", reason="too much", actor=actor)
    with pytest.raises(ValidationFailed):
        credit_note_create(invoice=invoice, amount="-1", reason="negative", actor=actor)
    paid = invoice_mark_paid(invoice=invoice, actor=actor)
    assert paid.status == InvoiceStatus.PAID and paid.paid_at is not None
    with pytest.raises(Conflict):
        invoice_void(invoice=paid, actor=actor)
    # The invoice itself never changed.
    invoice.refresh_from_db()
    assert invoice.total_minor == 10000


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    usage=st.lists(
        st.tuples(st.integers(0, 3_000_000), st.integers(0, 3_000_000), st.integers(0, 27)), min_size=1, max_size=12
    ),
    input_price=prices,
    output_price=prices,
)
@pytest.mark.django_db
def test_issued_invoice_equals_ledger_recomputation(
    usage: list[tuple[int, int, int]], input_price: Decimal, output_price: Decimal
) -> None:
    Invoice.objects.all().delete()
    tenant = factories.tenant()
    priced = plan_with_price(input_per_1m=str(input_price), output_per_1m=str(output_price))
    subscribe_directly(tenant, priced.plan)
    ledger_add(
        [journal_record(tenant, prompt=p, completion=c, at=PERIOD_START + timedelta(days=d)) for p, c, d in usage]
    )
    billing_run(period="2026-03")
    invoice = Invoice.objects.get(tenant=tenant)
    prompt = sum(p for p, _, _ in usage)
    completion = sum(c for _, c, _ in usage)
    expected = 0
    if prompt:
        expected += to_minor(Decimal(prompt) * input_price / 10**6, "USD")
    if completion:
        expected += to_minor(Decimal(completion) * output_price / 10**6, "USD")
    assert invoice.total_minor == expected
    assert invoice.total_minor == sum(
        InvoiceLine.objects.filter(invoice=invoice).values_list("amount_minor", flat=True)
    )


@pytest.mark.django_db
# Just after New Year: the month that ended is December of the year before.
@time_machine.travel(datetime(2027, 1, 1, 0, 0, 30, tzinfo=UTC), tick=False)
def test_monthly_task_bills_the_month_that_just_ended() -> None:
    from billing.money import month_start, period_label
    from billing.tasks import billing_run_previous_month_task

    tenant = factories.tenant()
    subscribe_directly(tenant, plan_with_price(base_fee="5.00").plan)
    previous = month_start(month_start(datetime.now(UTC)) - timedelta(days=1))
    assert billing_run_previous_month_task.apply().get() == 1
    invoice = Invoice.objects.get(tenant=tenant)
    assert period_label(invoice.period_start) == period_label(previous) == "2026-12"
    assert invoice.total_minor == 500
    assert billing_run_previous_month_task.apply().get() == 0
