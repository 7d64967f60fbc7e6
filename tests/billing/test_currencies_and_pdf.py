"""Money in every currency (ISO 4217 minor units from CLDR through babel, unknown codes refused)
and invoice PDFs that print hostile names as text, read back with pypdf."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pypdf import PdfReader

from billing.exports import invoice_pdf
from billing.models import Invoice, InvoiceLine, Plan
from billing.money import currency_exponent, format_minor, to_minor, validate_currency
from billing.services.invoices import billing_run
from billing.services.plans import plan_create
from core.errors import ValidationFailed
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        # No minor unit: sent to Stripe as-is, never x100.
        *((c, 0) for c in ("XOF", "XAF", "UGX", "PYG", "RWF", "JPY", "KRW", "CLP", "VND", "ISK")),
        # Three decimals: x1000, not x100.
        *((c, 3) for c in ("JOD", "TND", "BHD", "KWD", "OMR")),
        *((c, 2) for c in ("USD", "EUR", "GBP", "CHF", "BRL", "INR")),
    ],
)
def test_minor_unit_of_every_currency(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    # 12.3456 rounds half-up to the currency's minor unit.
    expected = {0: 12, 2: 1235, 3: 12346}[exponent]
    assert to_minor(Decimal("12.3456"), currency) == expected
    assert format_minor(expected, currency) == {0: "12", 2: "12.35", 3: "12.346"}[exponent]


def test_half_up_at_the_minor_unit() -> None:
    assert to_minor(Decimal("0.5"), "XOF") == 1
    assert to_minor(Decimal("1.0005"), "JOD") == 1001
    assert to_minor(Decimal("1.005"), "USD") == 101
    assert to_minor(Decimal("1.0049999"), "USD") == 100


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("ABC", "unknown_currency"),  # three letters, but no currency
        ("DEM", "unknown_currency"),  # obsolete
        ("XAU", "unknown_currency"),  # gold, not tender
        ("US", "invalid_currency"),
        ("US1", "invalid_currency"),
        ("", "invalid_currency"),
        ("EURO", "invalid_currency"),
    ],
)
def test_unknown_or_malformed_codes_are_refused(value: str, code: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_currency(value)
    assert info.value.code == code and info.value.param == "currency"
    with pytest.raises(ValidationFailed):
        currency_exponent(value)


def test_codes_are_normalised() -> None:
    assert validate_currency(" xof ") == "XOF"


@pytest.mark.django_db
def test_a_plan_in_an_unknown_currency_is_refused_and_nothing_is_written() -> None:
    with pytest.raises(ValidationFailed) as info:
        plan_create(name="Bogus", currency="ZZZ", actor=factories.SYSTEM)
    assert info.value.code == "unknown_currency"
    assert not Plan.objects.filter(name="Bogus").exists()
    plan = plan_create(name="West Africa", currency="xof", actor=factories.SYSTEM, base_fee="5000")
    assert plan.currency == "XOF"


@pytest.mark.django_db
def test_an_invoice_in_a_currency_without_minor_unit_counts_whole_units() -> None:
    tenant = factories.tenant()
    priced = plan_with_price(currency="XOF", base_fee="5000", input_per_1m="600", output_per_1m="0")
    subscribe_directly(tenant, priced.plan)
    ledger_add([journal_record(tenant, prompt=2_500_000, completion=0, at=datetime(2026, 5, 10, tzinfo=UTC))])
    billing_run(period="2026-05", now=datetime(2026, 6, 1, 1, tzinfo=UTC))
    invoice = Invoice.objects.get(tenant=tenant)
    # 5,000 XOF base fee + 2.5M tokens at 600 per 1M = 6,500 XOF: 6,500 minor units, not 650,000.
    assert invoice.total_minor == 6500
    assert format_minor(invoice.total_minor, "XOF") == "6500"


HOSTILE = {
    "tenant": 'Smith & Sons <b>Ltd</b> "quoted" <font size=40>big</font> &amp; </para>',
    "issuer": "Issuer & Co <i>",
    "model": "m<&>x",
}


def _pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


@pytest.mark.django_db
def test_invoice_pdf_prints_hostile_names_as_text(settings: object) -> None:
    settings.BILLING_ISSUER_NAME = HOSTILE["issuer"]  # type: ignore[attr-defined]
    tenant = factories.tenant(name=HOSTILE["tenant"])
    priced = plan_with_price(base_fee="10.00", model=HOSTILE["model"], input_per_1m="1.0", output_per_1m="2.0")
    subscribe_directly(tenant, priced.plan)
    at = datetime(2026, 5, 10, tzinfo=UTC)
    ledger_add([journal_record(tenant, model=HOSTILE["model"], version="v<1>&", prompt=1000, completion=10, at=at)])
    billing_run(period="2026-05", now=at + timedelta(days=30))
    invoice = Invoice.objects.get(tenant=tenant)
    lines = list(InvoiceLine.objects.filter(invoice=invoice))
    assert any(HOSTILE["model"] in line.model_name for line in lines)
    data = invoice_pdf(invoice, lines)
    assert data.startswith(b"%PDF")
    text = _pdf_text(data)
    for value in (HOSTILE["tenant"], HOSTILE["issuer"], HOSTILE["model"]):
        assert re.sub(r"\s+", " ", value) in text, (value, text)
    assert f"Total due: {format_minor(invoice.total_minor, invoice.currency)} USD" in text
