"""The service-level pages (tenant and staff) and the cost-of-serving page and CSV (staff)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from billing.selectors_cost import COST_CSV_COLUMNS
from tenants.permissions import Role
from tests.frontend.conftest import World, client_for


def test_tenant_slo_page_shows_its_own_budget_only(world: World) -> None:
    response = client_for(world.users[Role.VIEWER]).get(f"/t/{world.acme.slug}/slo/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-tenant="acme"' in html and 'data-model="demo-llama"' in html
    assert "globex" not in html.split('id="slo-table"')[1]
    # Another tenant's page looks missing.
    assert client_for(world.outsider).get(f"/t/{world.acme.slug}/slo/").status_code == 404


def test_staff_slo_page_lists_every_tenant_and_links_each(world: World) -> None:
    response = client_for(world.staff).get("/platform/slo/?month=2026-03")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-tenant="acme"' in html and f'href="/t/{world.acme.slug}/slo/?month=2026-03"' in html
    assert ">100.000%<" in html  # no failure this month: the whole budget is left


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("month=2026-13", "not a valid month"),
        ("month=March", "YYYY-MM"),
        ("month=" + "2" * 5000, "YYYY-MM"),
        ("by=region", "by must be one of tenant, model, node"),
    ],
)
def test_bad_parameters_are_a_precise_400(world: World, query: str, message: str) -> None:
    staff = client_for(world.staff)
    for path in ("/platform/cost/", "/platform/cost.csv"):
        response = staff.get(f"{path}?{query}")
        assert response.status_code == 400, path
        assert message in response.content.decode()
    if query.startswith("month"):
        assert staff.get(f"/platform/slo/?{query}").status_code == 400
        assert client_for(world.users[Role.OWNER]).get(f"/t/{world.acme.slug}/slo/?{query}").status_code == 400


def test_cost_page_and_csv_per_tenant_model_and_node(world: World) -> None:
    staff = client_for(world.staff)
    page = staff.get("/platform/cost/?month=2026-03&by=tenant")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-key="acme"' in html and 'id="cost-total"' in html
    assert 'href="/platform/cost.csv?month=2026-03&amp;by=tenant"' in html
    for by, key in (("tenant", "acme"), ("model", "demo-llama"), ("node", "node-test")):
        response = staff.get(f"/platform/cost.csv?month=2026-03&by={by}")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        assert response["Content-Disposition"] == f'attachment; filename="serving-cost-2026-03-{by}.csv"'
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))  # type: ignore[attr-defined]
        assert tuple(rows[0]) == COST_CSV_COLUMNS
        body: list[dict[str, Any]] = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
        assert [(r["dimension"], r["key"], r["month"], r["requests"]) for r in body] == [(by, key, "2026-03", "1")]
        assert body[0]["currency"] == "USD" and body[0]["margin"] != ""


@pytest.mark.parametrize("who", [r.value for r in Role])
def test_tenant_roles_may_not_see_cost(world: World, who: str) -> None:
    client = client_for(world.users[Role(who)])
    for path in ("/platform/cost/", "/platform/cost.csv", "/platform/slo/"):
        assert client.get(path).status_code == 403, (who, path)
