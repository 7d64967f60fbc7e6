"""Stripe through the real `stripe` library against a local fake Stripe server."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from billing.models import BillingAccount, Invoice, InvoiceLine, InvoiceStatus, StripeEvent
from billing.services.invoices import billing_run
from billing.services.stripe_sync import invoice_stripe_push
from billing.tasks import invoice_stripe_push_task
from tests import factories
from tests.billing.fake_stripe import FakeStripe, fake_stripe_server
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

WEBHOOK_SECRET = "whsec_test_secret"
WEBHOOK_URL = "/api/v1/billing/stripe/webhook/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def fake(settings: Any) -> Iterator[FakeStripe]:
    with fake_stripe_server() as server:
        settings.STRIPE_API_KEY = "sk_test_fake"
        settings.STRIPE_ENABLED = True
        settings.STRIPE_API_BASE = server.url
        settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
        settings.STRIPE_MAX_NETWORK_RETRIES = 2
        yield server


def _issued_invoice() -> Invoice:
    tenant = factories.tenant()
    priced = plan_with_price(base_fee="20.00", included_tokens=1000, input_per_1m="3", output_per_1m="15")
    subscribe_directly(tenant, priced.plan)
    ledger_add([journal_record(tenant, prompt=400_000, completion=100_000, at=_in_january())])
    billing_run(period="2026-01")
    return Invoice.objects.get(tenant=tenant)


def _in_january() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 10, tzinfo=UTC)


def test_push_creates_customer_items_and_finalizes_with_stable_keys(fake: FakeStripe) -> None:
    invoice = _issued_invoice()
    stripe_id = invoice_stripe_push(invoice_id=invoice.pk)
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id == stripe_id and invoice.stripe_synced_at is not None
    customer = fake.calls_to("/v1/customers")
    assert [c.idempotency_key for c in customer] == [f"mmorch-customer-{invoice.tenant_id}"]
    assert BillingAccount.objects.get(tenant=invoice.tenant).stripe_customer_id.startswith("cus_")
    items = fake.calls_to("/v1/invoiceitems")
    lines = list(InvoiceLine.objects.filter(invoice=invoice).order_by("position"))
    assert len(items) == len(lines)
    assert [c.idempotency_key for c in items] == [f"mmorch-invoice-{invoice.pk}-line-{line.pk}" for line in lines]
    # Positive lines carry unit_amount_decimal in minor units; the discount is a negative amount.
    for call, line in zip(items, lines, strict=True):
        if line.amount_minor >= 0:
            assert call.form["unit_amount_decimal"] == str(line.amount_minor)
        else:
            assert call.form["amount"] == str(line.amount_minor)
        assert call.form["invoice"] == stripe_id
    assert sum(int(c.form.get("unit_amount_decimal") or c.form["amount"]) for c in items) == invoice.total_minor
    finalize = fake.calls_to(f"/v1/invoices/{stripe_id}/finalize")
    assert [c.idempotency_key for c in finalize] == [f"mmorch-invoice-{invoice.pk}-finalize"]
    # Pushing again sends the same keys: Stripe replays, nothing new is created.
    before = len(fake.objects)
    assert invoice_stripe_push(invoice_id=invoice.pk) == stripe_id
    assert len(fake.objects) == before
    assert [c.idempotency_key for c in fake.calls_to("/v1/invoiceitems")[len(items) :]] == [
        c.idempotency_key for c in items
    ]


def test_library_retries_a_500_with_the_same_idempotency_key(fake: FakeStripe) -> None:
    invoice = _issued_invoice()
    fake.fail("/v1/invoiceitems", times=1)
    invoice_stripe_push(invoice_id=invoice.pk)
    items = fake.calls_to("/v1/invoiceitems")
    assert items[0].status == 500 and items[1].status == 200
    assert items[0].idempotency_key == items[1].idempotency_key
    assert len({c.idempotency_key for c in items}) == InvoiceLine.objects.filter(invoice=invoice).count()


def test_task_retries_on_stripe_errors_and_ends_up_synced(fake: FakeStripe, settings: Any) -> None:
    settings.STRIPE_MAX_NETWORK_RETRIES = 0  # the library gives up at once; the task retries
    invoice = _issued_invoice()
    fake.fail("/v1/invoices", times=2)
    result = invoice_stripe_push_task.apply(args=[invoice.pk])
    assert result.successful(), result.traceback
    creates = [c for c in fake.calls_to("/v1/invoices") if c.path == "/v1/invoices"]
    assert [c.status for c in creates] == [500, 500, 200]
    assert {c.idempotency_key for c in creates} == {f"mmorch-invoice-{invoice.pk}"}
    invoice.refresh_from_db()
    assert invoice.stripe_synced_at is not None


def _signed(payload: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def _event(event_type: str, invoice: Invoice, event_id: str = "evt_1") -> bytes:
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": invoice.stripe_invoice_id or "in_x",
                "object": "invoice",
                "metadata": {"mmorch_invoice_id": str(invoice.pk)},
            }
        },
    }
    return json.dumps(body).encode()


def _post(payload: bytes, signature: str | None) -> Any:
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return Client().post(WEBHOOK_URL, data=payload, content_type="application/json", **headers)


def test_webhook_accepts_a_valid_signature_and_marks_paid(fake: FakeStripe) -> None:
    invoice = _issued_invoice()
    payload = _event("invoice.paid", invoice)
    response = _post(payload, _signed(payload))
    assert response.status_code == 200, response.content
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID and invoice.paid_at is not None
    # Stripe delivers at least once: the same event again changes nothing.
    again = _post(payload, _signed(payload))
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert StripeEvent.objects.count() == 1


def test_webhook_payment_failed_keeps_the_invoice_open(fake: FakeStripe) -> None:
    invoice = _issued_invoice()
    payload = _event("invoice.payment_failed", invoice, "evt_fail")
    assert _post(payload, _signed(payload)).status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and invoice.payment_failed_at is not None


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(lambda p: _signed(p, secret="whsec_wrong"), id="wrong-secret"),
        pytest.param(lambda p: _signed(p, at=int(time.time()) - 301), id="stale"),
        pytest.param(lambda p: _signed(p + b" "), id="other-body"),
        pytest.param(lambda p: "garbage", id="malformed"),
        pytest.param(lambda p: None, id="missing"),
    ],
)
def test_webhook_rejects_bad_signatures(fake: FakeStripe, signature: Any) -> None:
    invoice = _issued_invoice()
    payload = _event("invoice.paid", invoice)
    response = _post(payload, signature(payload))
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN
    assert not StripeEvent.objects.exists()


def test_webhook_within_tolerance_is_accepted(fake: FakeStripe) -> None:
    invoice = _issued_invoice()
    payload = _event("invoice.paid", invoice, "evt_late")
    assert _post(payload, _signed(payload, at=int(time.time()) - 290)).status_code == 200


def test_webhook_for_a_voided_invoice_is_recorded_not_applied(fake: FakeStripe) -> None:
    from billing.services.invoices import invoice_void

    invoice = _issued_invoice()
    invoice_void(invoice=invoice, actor=factories.SYSTEM)
    payload = _event("invoice.paid", invoice, "evt_after_void")
    response = _post(payload, _signed(payload))
    assert response.status_code == 200 and response.json()["result"] == "refused:invalid_transition"
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.VOID
    assert StripeEvent.objects.filter(event_id="evt_after_void").exists()
    other = json.dumps(
        {"id": "evt_cus", "object": "event", "type": "customer.created", "data": {"object": {}}}
    ).encode()
    assert _post(other, _signed(other)).json()["result"] == "ignored"
    assert _post(b"not json", _signed(b"not json")).status_code == 400


def test_issuing_queues_the_push_after_commit(fake: FakeStripe, django_capture_on_commit_callbacks: Any) -> None:
    from billing.services.invoices import credit_note_create
    from config.celery import app

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        invoice = _issued_invoice()
    assert len(callbacks) == 1
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        callbacks[0]()
    finally:
        app.conf.task_always_eager = eager
    invoice.refresh_from_db()
    assert invoice.stripe_invoice_id and invoice.stripe_synced_at is not None
    assert fake.calls_to(f"/v1/invoices/{invoice.stripe_invoice_id}/finalize")
    # Credit notes stay with staff: nothing queued.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        credit_note_create(invoice=invoice, amount="1.00", reason="goodwill", actor=factories.SYSTEM)
    assert callbacks == []
