"""Management API of billing: invoices, CSV and PDF exports, usage buckets; roles and bad input."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from pypdf import PdfReader

from billing.exports import INVOICE_COLUMNS, LINE_COLUMNS
from billing.models import Invoice, InvoiceLine, InvoiceStatus, UsageRecord, UsageRollup
from billing.money import format_minor
from billing.services.invoices import billing_run
from tenants.models import AuditEvent
from tenants.permissions import Role
from tests import factories
from tests.factories import journal_record, ledger_add, plan_with_price, subscribe_directly

pytestmark = pytest.mark.django_db
JAN = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def billed() -> dict[str, Any]:
    """Two tenants with members, a plan, usage in January and February, invoices issued."""
    acme, users = factories.tenant_with_members("acme-bill")
    globex, _ = factories.tenant_with_members("globex-bill", roles=[Role.OWNER])
    key, _ = factories.inference_key(acme, users[Role.DEVELOPER])
    priced = plan_with_price(base_fee="12.34", included_tokens=10_000, input_per_1m="0.250000", output_per_1m="1.1")
    subscribe_directly(acme, priced.plan)
    subscribe_directly(globex, priced.plan)
    records = []
    for day in range(0, 40, 3):
        records.append(
            journal_record(
                acme, key=key.pk, prompt=12_345 + day, completion=6_789, at=JAN + timedelta(days=day, hours=5)
            )
        )
        records.append(journal_record(acme, model="other", prompt=1000, completion=10, at=JAN + timedelta(days=day)))
        records.append(journal_record(globex, prompt=5, completion=5, at=JAN + timedelta(days=day)))
    ledger_add(records)
    billing_run(period="2026-01")
    billing_run(period="2026-02")
    return {"acme": acme, "globex": globex, "users": users, "key": key}


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _csv(response: Any) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_invoice_list_and_detail(billed: dict[str, Any]) -> None:
    client = _client(billed["users"][Role.FINANCE])
    response = client.get("/api/v1/tenants/acme-bill/invoices/")
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert all(r["number"].startswith("MMO-") for r in results)
    detail = client.get(f"/api/v1/tenants/acme-bill/invoices/{results[0]['number']}/").json()
    assert detail["id"] == results[0]["id"]
    assert sum(line["amount_minor"] for line in detail["lines"]) == detail["total_minor"]
    assert client.get("/api/v1/tenants/acme-bill/invoices/?status=bogus").status_code == 400


def test_invoice_csv_columns_and_sums(billed: dict[str, Any]) -> None:
    client = _client(billed["users"][Role.OWNER])
    response = client.get("/api/v1/tenants/acme-bill/invoices/export.csv", HTTP_ACCEPT="text/csv")
    assert response.status_code == 200 and response["content-type"].startswith("text/csv")
    rows = _csv(response)
    assert list(rows[0].keys()) == list(INVOICE_COLUMNS)
    invoices = {i.number: i for i in Invoice.objects.filter(tenant=billed["acme"])}
    assert {r["invoice_number"] for r in rows} == set(invoices)
    for row in rows:
        invoice = invoices[row["invoice_number"]]
        assert row["tenant_slug"] == "acme-bill" and row["tax"] == "0.00"
        assert Decimal(row["total"]) == Decimal(row["subtotal"]) - Decimal(row["discount"]) + Decimal(row["tax"])
        assert row["total"] == format_minor(invoice.total_minor, "USD")
    lines = _csv(client.get("/api/v1/tenants/acme-bill/invoices/lines.csv"))
    assert list(lines[0].keys()) == list(LINE_COLUMNS)
    for number, invoice in invoices.items():
        amount = sum(Decimal(r["amount"]) for r in lines if r["invoice_number"] == number)
        assert amount == Decimal(format_minor(invoice.total_minor, "USD"))
    assert {r["tenant_slug"] for r in lines} == {"acme-bill"}


def test_invoice_pdf_holds_number_and_total(billed: dict[str, Any]) -> None:
    client = _client(billed["users"][Role.FINANCE])
    invoice = Invoice.objects.filter(tenant=billed["acme"]).order_by("period_start").first()
    assert invoice is not None
    response = client.get(f"/api/v1/tenants/acme-bill/invoices/{invoice.pk}/pdf")
    assert response.status_code == 200 and response["content-type"] == "application/pdf"
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(response.content)).pages)
    assert invoice.number in text
    assert f"Total due: {format_minor(invoice.total_minor, 'USD')} USD" in text


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.OWNER, 200), (Role.FINANCE, 200), (Role.DEVELOPER, 403), (Role.VIEWER, 403), (Role.ADMIN, 403)],
)
def test_export_permissions(billed: dict[str, Any], role: Role, status: int) -> None:
    client = _client(billed["users"][role])
    invoice = Invoice.objects.filter(tenant=billed["acme"]).first()
    assert invoice is not None
    for url in (
        "/api/v1/tenants/acme-bill/invoices/",
        "/api/v1/tenants/acme-bill/invoices/export.csv",
        "/api/v1/tenants/acme-bill/invoices/lines.csv",
        f"/api/v1/tenants/acme-bill/invoices/{invoice.pk}/pdf",
        f"/api/v1/tenants/acme-bill/invoices/{invoice.pk}/",
    ):
        response = client.get(url)
        assert response.status_code == status, url
        if status != 200:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_other_tenant_gets_404(billed: dict[str, Any]) -> None:
    outsider = _client(billed["users"][Role.OWNER])
    globex_invoice = Invoice.objects.filter(tenant=billed["globex"]).first()
    assert globex_invoice is not None
    # acme's owner asks for globex's invoice through acme's URL, and for globex's tenant.
    assert outsider.get(f"/api/v1/tenants/acme-bill/invoices/{globex_invoice.pk}/").status_code == 404
    assert outsider.get(f"/api/v1/tenants/acme-bill/invoices/{globex_invoice.number}/pdf").status_code == 404
    assert outsider.get("/api/v1/tenants/globex-bill/invoices/export.csv").status_code == 404
    assert outsider.get("/api/v1/tenants/globex-bill/invoices/").status_code == 404


def test_admin_key_with_billing_scope_exports(billed: dict[str, Any]) -> None:
    _, raw = factories.admin_key(billed["acme"], billed["users"][Role.FINANCE])
    response = Client().get("/api/v1/tenants/acme-bill/invoices/export.csv", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert len(_csv(response)) == 2


def test_staff_platform_export_and_mark_paid(billed: dict[str, Any]) -> None:
    staff = _client(factories.staff_user())
    rows = _csv(staff.get("/api/v1/billing/invoices.csv"))
    assert {r["tenant_slug"] for r in rows} == {"acme-bill", "globex-bill"}
    assert len(_csv(staff.get("/api/v1/billing/invoice-lines.csv"))) == InvoiceLine.objects.count()
    assert _client(billed["users"][Role.OWNER]).get("/api/v1/billing/invoices.csv").status_code == 403
    invoice = Invoice.objects.filter(tenant=billed["acme"]).first()
    assert invoice is not None
    url = f"/api/v1/tenants/acme-bill/invoices/{invoice.pk}/mark-paid/"
    assert _client(billed["users"][Role.OWNER]).post(url).status_code == 403
    response = staff.post(url)
    assert response.status_code == 200 and response.json()["status"] == "paid"
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    assert AuditEvent.objects.filter(action="invoice.paid", target_id=str(invoice.pk)).exists()


def test_usage_api_buckets_match_the_ledger(billed: dict[str, Any]) -> None:
    client = _client(billed["users"][Role.VIEWER])
    start, end = int(JAN.timestamp()), int((JAN + timedelta(days=10)).timestamp())
    body = client.get(f"/api/v1/tenants/acme-bill/usage?start={start}&end={end}&bucket=day&group_by=model").json()
    assert body["object"] == "page" and len(body["data"]) == 10
    assert body["data"][0]["start_time"] == start and body["data"][-1]["end_time"] == end
    in_range = UsageRecord.objects.filter(
        tenant=billed["acme"], started_at__gte=JAN, started_at__lt=JAN + timedelta(days=10)
    )
    for model in ("demo-llama", "other"):
        results = [r for b in body["data"] for r in b["results"] if r["model"] == model]
        rows = in_range.filter(model_name=model)
        assert sum(r["input_tokens"] for r in results) == sum(rows.values_list("prompt_tokens", flat=True))
        assert sum(r["output_tokens"] for r in results) == sum(rows.values_list("completion_tokens", flat=True))
        assert sum(r["num_model_requests"] for r in results) == rows.count()
    by_key = client.get(
        "/api/v1/tenants/acme-bill/usage/?start=2026-01-01&end=2026-01-02&bucket=hour&group_by=key"
    ).json()
    assert len(by_key["data"]) == 24
    keyed = [r for b in by_key["data"] for r in b["results"] if r["api_key_id"] == str(billed["key"].pk)]
    assert sum(r["num_model_requests"] for r in keyed) == 1
    assert keyed[0]["cost"]["currency"] == "usd"


def test_usage_api_filters_by_models_and_key_ids(billed: dict[str, Any]) -> None:
    client = _client(billed["users"][Role.VIEWER])
    key_id = billed["key"].pk
    base = "/api/v1/tenants/acme-bill/usage?start=2026-01-01&end=2026-01-11&group_by=model,key"
    in_range = UsageRecord.objects.filter(
        tenant=billed["acme"], started_at__gte=JAN, started_at__lt=JAN + timedelta(days=10)
    )

    def results(query: str) -> list[dict[str, Any]]:
        response = client.get(f"{base}&{query}")
        assert response.status_code == 200, response.content
        body = response.json()
        assert len(body["data"]) == 10  # every bucket is listed, filtered or not
        return [r for b in body["data"] for r in b["results"]]

    other = results("models=other")
    assert other and {r["model"] for r in other} == {"other"}
    assert sum(r["input_tokens"] for r in other) == sum(
        in_range.filter(model_name="other").values_list("prompt_tokens", flat=True)
    )
    both = results("models=demo-llama&models=other")
    assert both == results("models=other,demo-llama")  # repeated or comma-separated, in any order
    assert sum(r["num_model_requests"] for r in both) == in_range.count()
    keyed = results(f"key_ids={key_id}")
    assert keyed and {r["api_key_id"] for r in keyed} == {str(key_id)}
    assert sum(r["num_model_requests"] for r in keyed) == in_range.filter(key_id=key_id).count()
    assert results(f"api_key_ids={key_id}") == keyed  # OpenAI's name for the same filter
    assert results(f"models=other&key_ids={key_id}") == []  # that key only called demo-llama
    assert results("models=no-such-model") == []
    # Another tenant's key id narrows to nothing rather than revealing anything.
    globex_key, _ = factories.inference_key(billed["globex"])
    assert results(f"key_ids={globex_key.pk}") == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("start=2026-01-01&group_by=region", "group_by"),
        ("start=2026-01-05&end=2026-01-01", "end"),
        ("start=2026-01-05&end=2026-01-05", "end"),
        ("start=yesterday", "start"),
        ("end=2026-01-05", "start"),
        ("start=2026-01-01&bucket=week", "bucket"),
        ("start=2026-01-01&end=2026-03-01&bucket=hour", "end"),
        ("start=2020-01-01&end=2026-01-01&bucket=day", "end"),
        ("start=2026-01-01&colour=red", "colour"),
        ("start=99999999999999", "start"),
        ("start=2026-01-01&models=", "models"),
        ("start=2026-01-01&models=demo-llama,,other", "models"),
        ("start=2026-01-01&models=" + "m" * 201, "models"),
        ("start=2026-01-01&models=" + ",".join(f"m{i}" for i in range(101)), "models"),
        ("start=2026-01-01&key_ids=abc", "key_ids"),
        ("start=2026-01-01&key_ids=0", "key_ids"),
        ("start=2026-01-01&api_key_ids=-3", "key_ids"),
        ("start=2026-01-01&key_ids=1.5", "key_ids"),
        ("start=2026-01-01&key_ids=99999999999999999999", "key_ids"),
        ("start=2026-01-01&key_ids=", "key_ids"),
        ("start=2026-01-01&key_ids=" + "9" * 5000, "key_ids"),
    ],
)
def test_usage_api_bad_input_is_400_and_writes_nothing(billed: dict[str, Any], query: str, param: str) -> None:
    client = _client(billed["users"][Role.OWNER])
    counts = (UsageRollup.objects.count(), Invoice.objects.count(), AuditEvent.objects.count())
    response = client.get(f"/api/v1/tenants/acme-bill/usage?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert (UsageRollup.objects.count(), Invoice.objects.count(), AuditEvent.objects.count()) == counts


def test_usage_api_needs_usage_scope_and_membership(billed: dict[str, Any]) -> None:
    assert Client().get("/api/v1/tenants/acme-bill/usage?start=2026-01-01").status_code == 401
    globex_owner = factories.member(billed["globex"], Role.OWNER)
    assert _client(globex_owner).get("/api/v1/tenants/acme-bill/usage?start=2026-01-01").status_code == 404
