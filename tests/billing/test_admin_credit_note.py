"""Finance issues credit notes from the invoice's admin page (through `credit_note_create`)."""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import Invoice, InvoiceKind
from billing.services.invoices import billing_run
from tenants.models import AuditEvent
from tests import factories
from tests.factories import plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db


def _issued_invoice() -> Invoice:
    tenant = factories.tenant()
    priced = plan_with_price(base_fee="100.00")
    subscribe_directly(tenant, priced.plan)
    billing_run(period="2026-01")
    return Invoice.objects.get(tenant=tenant, kind=InvoiceKind.INVOICE)


def _staff_client() -> Client:
    client = Client()
    client.force_login(factories.staff_user())
    return client


def test_staff_issue_a_credit_note_from_the_invoice_page() -> None:
    invoice = _issued_invoice()
    client = _staff_client()
    page = client.get(f"/admin/billing/invoice/{invoice.pk}/change/")
    assert page.status_code == 200
    url = f"/admin/billing/invoice/{invoice.pk}/credit-note/"
    assert url.encode() in page.content
    assert client.get(url).status_code == 200
    response = client.post(url, {"amount": "30.005", "reason": "service credit"})
    assert response.status_code == 302, response.content[:2000]
    note = Invoice.objects.get(credits=invoice)
    assert note.kind == InvoiceKind.CREDIT_NOTE and note.total_minor == -3001
    assert response["Location"].endswith(f"/admin/billing/invoice/{note.pk}/change/")
    assert note.number is not None and "-CN-" in note.number
    assert AuditEvent.objects.filter(tenant=invoice.tenant, target_type="invoice").exists()


def test_too_much_credit_is_refused_on_the_form_and_writes_nothing() -> None:
    invoice = _issued_invoice()
    response = _staff_client().post(
        f"/admin/billing/invoice/{invoice.pk}/credit-note/", {"amount": "100.01", "reason": "too much"}
    )
    assert response.status_code == 200
    assert b"can still be credited" in response.content
    assert not Invoice.objects.filter(credits=invoice).exists()


def test_non_staff_cannot_issue_credit_notes() -> None:
    invoice = _issued_invoice()
    client = Client()
    client.force_login(factories.user())
    response = client.post(f"/admin/billing/invoice/{invoice.pk}/credit-note/", {"amount": "1", "reason": "x"})
    assert response.status_code == 302  # to the admin sign-in
    assert not Invoice.objects.filter(credits=invoice).exists()
