"""What the pages show: usage against limits, usage reports and CSV, billing exports, audit, models."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pypdf import PdfReader

from billing.models import Plan, Price
from billing.money import format_minor
from tenants import services
from tenants.audit import audit_record
from tenants.permissions import Role
from tests.factories import journal_record, ledger_add
from tests.frontend.conftest import SYSTEM, World, client_for, this_month_moment


def _body(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize(
    ("clock", "chart_input", "chart_output"),
    [
        # Mid-month: last month's request (on its 3rd day) is outside the 30-day chart.
        (datetime(2026, 3, 17, 14, 30, tzinfo=UTC), 300, 200),
        # The first minutes of a month: the chart reaches back into last month and holds both.
        (datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC), 1300, 700),
        (datetime(2026, 12, 1, 0, 0, tzinfo=UTC), 1300, 700),
        # The 2nd of a month: after a 30-day month the 3rd of last month is the chart's first day,
        # after a 31-day month it is a day too early.
        (datetime(2026, 12, 2, 9, 0, tzinfo=UTC), 1300, 700),
        (datetime(2026, 11, 2, 9, 0, tzinfo=UTC), 300, 200),
        # A leap day.
        (datetime(2028, 2, 29, 12, 0, tzinfo=UTC), 300, 200),
        # The last second of a month and of a year.
        (datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC), 300, 200),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), 300, 200),
    ],
    indirect=["clock"],
)
def test_overview_shows_this_month_against_the_limits(world: World, chart_input: int, chart_output: int) -> None:
    services.limits_update(tenant=world.acme, actor=SYSTEM, monthly_token_budget=1000)
    page = client_for(world.users[Role.VIEWER]).get("/t/acme/")
    assert page.status_code == 200
    gauges = {g.label: g for g in page.context["gauges"]}
    # This month holds one request of 300 + 200 tokens (last month's are on the invoice).
    assert gauges["Requests this month"].used == 1
    assert gauges["Tokens this month"].used == 500
    assert gauges["Tokens this month"].percent == 50
    html = page.content.decode()
    assert "50% of 1,000" in html
    chart = json.loads(re.search(r'<script id="overview-chart" type="application/json">(.*?)</script>', html).group(1))
    assert len(chart["data"]["labels"]) == 30
    assert chart["data"]["labels"][-1] == timezone.now().strftime("%m-%d")
    assert sum(chart["data"]["datasets"][0]["data"]) == chart_input
    assert sum(chart["data"]["datasets"][1]["data"]) == chart_output
    assert [m.model_name for m in page.context["top_models"]] == ["demo-llama"]
    # A viewer does not manage keys, so the top-keys card lists none of them.
    assert page.context["top_keys"] == []
    owner_page = client_for(world.users[Role.OWNER]).get("/t/acme/")
    assert [k.tokens for k in owner_page.context["top_keys"]] == [500]
    assert "No inference node is registered." in html


def test_usage_filters_table_and_csv(world: World) -> None:
    client = client_for(world.users[Role.OWNER])
    key = world.keys[Role.OWNER][0]
    page = client.get("/t/acme/usage/", {"start": "2000-01-01", "end": "2000-12-31"})
    assert page.status_code == 200 and page.context["rows"] == []
    today = timezone.now().date()
    # From well before last month to today: both requests of the world.
    params = {"start": (today.replace(day=1) - timedelta(days=40)).isoformat(), "end": today.isoformat()}
    all_rows = client.get("/t/acme/usage/", params).context["rows"]
    assert sum(r.input_tokens for r in all_rows) == 1300 and sum(r.output_tokens for r in all_rows) == 700
    by_key = client.get("/t/acme/usage/", {**params, "key": str(key.pk)}).context["rows"]
    assert sum(r.requests for r in by_key) == 2
    other_key = world.keys[Role.ADMIN][0]
    assert client.get("/t/acme/usage/", {**params, "key": str(other_key.pk)}).context["rows"] == []
    assert client.get("/t/acme/usage/", {**params, "model": "demo-llama"}).context["rows"]
    download = client.get("/t/acme/usage/", {**params, "format": "csv"})
    assert download["Content-Type"].startswith("text/csv")
    assert "attachment" in download["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(_body(download).decode())))
    assert sum(int(r["input_tokens"]) for r in rows) == 1300
    assert {r["model"] for r in rows} == {"demo-llama"}


def test_usage_filters_narrow_the_query_table_and_chart(world: World) -> None:
    owner_key, admin_key = world.keys[Role.OWNER][0], world.keys[Role.ADMIN][0]
    at = this_month_moment()
    ledger_add(
        [
            journal_record(world.acme, key=admin_key.pk, prompt=4000, completion=40, at=at),
            journal_record(world.acme, key=None, prompt=7000, completion=70, at=at),
        ]
    )
    client = client_for(world.users[Role.OWNER])
    today = timezone.now().date()
    params = {"start": (today - timedelta(days=2)).isoformat(), "end": today.isoformat()}

    def inputs(**filters: str) -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            page = client.get("/t/acme/usage/", {**params, **filters})
        assert page.status_code == 200
        rollup_sql = [q["sql"] for q in queries.captured_queries if "billing_usagerollup" in q["sql"]]
        assert len(rollup_sql) == 1
        # The page hands its filters to the query instead of sifting the results.
        where = rollup_sql[0].split("WHERE", 1)[1]
        assert ('"key_id" =' in where) == ("key" in filters)
        assert ('"model_name" =' in where) == ("model" in filters)
        chart = page.context["chart"]["data"]["datasets"][0]["data"]
        return sum(r.input_tokens for r in page.context["rows"]), sum(chart)

    assert inputs() == (11_300, 11_300)
    assert inputs(key=str(owner_key.pk)) == (300, 300)
    assert inputs(key=str(admin_key.pk)) == (4000, 4000)
    assert inputs(model="demo-llama") == (11_300, 11_300)
    assert inputs(model="demo-llama", key=str(admin_key.pk)) == (4000, 4000)


def test_staff_see_the_plans_on_offer_with_their_current_prices(world: World) -> None:
    assert world.plan is not None
    Price.objects.create(
        plan=world.plan,
        model_name="demo-llama",
        input_per_1m=Decimal("0.5"),
        output_per_1m=Decimal("0.75"),
        effective_from=timezone.now() - timedelta(hours=1),
    )
    Price.objects.create(
        plan=world.plan,
        model_name="demo-llama",
        input_per_1m=Decimal("9"),
        output_per_1m=Decimal("9"),
        effective_from=timezone.now() + timedelta(days=3),
    )
    Plan.objects.create(name="Legacy", is_active=False)
    page = client_for(world.staff).get("/platform/tenants/acme/")
    assert page.status_code == 200
    offers = page.context["plans_offered"]
    assert [(o.plan.name, [(p.input_per_1m, p.output_per_1m) for p in o.prices]) for o in offers] == [
        ("Starter", [(Decimal("0.5"), Decimal("0.75"))])
    ]
    table = page.content.decode().split('<table id="plans-offered">', 1)[1].split("</table>", 1)[0]
    assert "Starter" in table and "0.5 USD" in table and "0.75 USD" in table
    assert "Legacy" not in table and "9 USD" not in table
    assert [label for _, label in page.context["plan_form"].fields["plan"].choices] == ["Starter (USD)"]


def test_usage_page_hides_other_peoples_key_names_from_developers(world: World) -> None:
    developer = client_for(world.users[Role.DEVELOPER])
    page = developer.get("/t/acme/usage/", {"start": "2020-01-01", "end": "2099-01-01"})
    assert page.status_code == 400  # more than 366 days
    today = timezone.now().date().isoformat()
    page = developer.get("/t/acme/usage/", {"start": today, "end": today})
    html = page.content.decode()
    assert "owner key" not in html
    assert world.keys[Role.OWNER][0].masked not in html


def test_billing_pages_and_exports(world: World) -> None:
    invoice = world.invoice
    assert invoice is not None
    client = client_for(world.users[Role.FINANCE])
    page = client.get("/t/acme/billing/").content.decode()
    assert invoice.number in page and "Starter" in page
    total = format_minor(invoice.total_minor, invoice.currency)
    assert total in page
    detail = client.get(f"/t/acme/billing/invoices/{invoice.pk}/")
    assert detail.status_code == 200 and total in detail.content.decode()
    pdf = client.get(f"/t/acme/billing/invoices/{invoice.pk}/pdf/")
    assert pdf["Content-Type"] == "application/pdf"
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert invoice.number in text and total in text
    invoices_csv = list(csv.DictReader(io.StringIO(_body(client.get("/t/acme/billing/invoices.csv")).decode())))
    assert [r["invoice_number"] for r in invoices_csv] == [invoice.number]
    assert invoices_csv[0]["total"] == total
    lines_csv = list(csv.DictReader(io.StringIO(_body(client.get("/t/acme/billing/invoice-lines.csv")).decode())))
    assert {r["invoice_number"] for r in lines_csv} == {invoice.number}
    # Another tenant's invoice is as missing as a made-up one.
    assert client_for(world.outsider).get(f"/t/globex/billing/invoices/{invoice.pk}/").status_code == 404


def test_audit_log_filters_and_pages(world: World) -> None:
    for i in range(30):
        audit_record(actor=SYSTEM, tenant=world.acme, action="key.update", target_type="api_key", target_id=i)
    client = client_for(world.users[Role.ADMIN])
    first = client.get("/t/acme/audit/", {"action": "key.update"})
    assert first.context["page"].paginator.count == 30
    assert len(first.context["page"].object_list) == 25
    second = client.get("/t/acme/audit/", {"action": "key.update", "page": "2"})
    assert len(second.context["page"].object_list) == 5
    assert "action=key.update" in first.content.decode()
    partial = client.get("/t/acme/audit/", {"action": "invitation"}, HTTP_HX_REQUEST="true")
    html = partial.content.decode()
    assert html.lstrip().startswith('<section id="audit-results"')
    assert "invitation.create" in html and "key.update" not in html
    by_actor = client.get("/t/acme/audit/", {"actor": "nobody@example.com"})
    assert by_actor.context["page"].paginator.count == 0


def test_models_page_lists_the_tenants_models(world: World) -> None:
    page = client_for(world.users[Role.DEVELOPER]).get("/t/acme/models/").content.decode()
    assert "demo-llama" in page and "A tiny demo model" in page
    assert "demo-llama" not in client_for(world.outsider).get("/t/globex/models/").content.decode()
    staff = client_for(world.staff)
    assert "Save traffic split" in staff.get("/platform/models/").content.decode()
    staff.post("/platform/models/demo-llama/traffic/", {"weight-v1": "40"})
    from gateway.models import ModelVersion

    assert ModelVersion.objects.get(model__name="demo-llama", version="v1").traffic_weight == 40


def test_static_assets_are_served_locally(world: World) -> None:
    page = client_for(world.users[Role.OWNER]).get("/t/acme/").content.decode()
    assert "https://" not in page and "http://" not in page.replace('xmlns="http://', "")
    for asset in ("/static/vendor/pico.min.css", "/static/vendor/htmx.min.js", "/static/vendor/chart.umd.min.js"):
        assert asset in page
        served = client_for(None).get(asset)
        assert served.status_code == 200, asset


def test_node_health_page_shows_each_node_and_refreshes_in_place(world: World) -> None:
    from gateway import services as gateway_services
    from gateway.models import ModelVersion, NodeState

    version = ModelVersion.objects.get(model__name="demo-llama", version="v1")
    gateway_services.node_register(
        name="node-a", base_url="http://127.0.0.1:9", versions=[version], state=NodeState.DOWN, actor=SYSTEM
    )
    staff = client_for(world.staff)
    page = staff.get("/platform/nodes/").content.decode()
    assert "node-a" in page and "demo-llama@v1" in page and 'hx-trigger="every 10s"' in page
    partial = staff.get("/platform/nodes/", HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith('<div class="table-wrap">') and "node-a" in partial
    overview = client_for(world.users[Role.VIEWER]).get("/t/acme/status/", HTTP_HX_REQUEST="true")
    assert "No node is up (1 registered)" in overview.content.decode()
