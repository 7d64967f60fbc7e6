"""Each role walks the dashboard in real Chromium; keys, the API and finance exports end to end."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from openai import AuthenticationError, OpenAI
from playwright.sync_api import Page, expect
from pypdf import PdfReader

from frontend.context_processors import SECTIONS
from tenants import services
from tenants.permissions import Role, role_has_scope
from tests.browser.conftest import snap
from tests.frontend.conftest import PASSWORD, SYSTEM, World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


@pytest.mark.parametrize("who", ["owner", "admin", "developer", "finance", "viewer", "staff"])
def test_each_role_walks_its_pages_and_cannot_reach_the_others(
    page: Page, live_server: object, world: World, who: str
) -> None:
    base = str(live_server)
    user = world.staff if who == "staff" else world.users[Role(who)]
    sign_in(page, base, user.email)
    page.goto(f"{base}/t/acme/")
    tenant_nav = page.get_by_role("navigation", name="Tenant")
    for key, label, _, scope in SECTIONS:
        allowed = who == "staff" or role_has_scope(who, scope)
        link = tenant_nav.get_by_role("link", name=label, exact=True)
        if allowed:
            link.click()
            expect(page).to_have_url(f"{base}/t/acme/{'' if key == 'overview' else key + '/'}")
            expect(page.locator("h1").first).to_be_visible()
            expect(link).to_have_attribute("aria-current", "page")
            snap(page, f"{who}-{key}")
        else:
            expect(link).to_have_count(0)
            # A hidden link is not the guard: the page itself refuses.
            response = page.goto(f"{base}/t/acme/{key}/")
            assert response is not None and response.status == 403, f"{who} reached {key}"
            expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
            page.goto(f"{base}/t/acme/")
    platform = page.goto(f"{base}/platform/")
    assert platform is not None
    if who == "staff":
        assert platform.status == 200
        expect(page.get_by_role("heading", name="Tenants")).to_be_visible()
        snap(page, "staff-platform")
    else:
        assert platform.status == 403
        # Another tenant looks exactly like one that does not exist.
        other = page.goto(f"{base}/t/globex/")
        missing = page.goto(f"{base}/t/no-such-tenant/")
        assert other is not None and missing is not None and other.status == missing.status == 404


def test_key_lifecycle_secret_once_api_call_revoke(page: Page, live_server: object, world: World) -> None:
    base = str(live_server)
    sign_in(page, base, world.users[Role.DEVELOPER].email)
    page.goto(f"{base}/t/acme/keys/")
    page.get_by_role("button", name="New key").click()
    page.get_by_label("Name").fill("browser key")
    page.get_by_label("demo-llama").check()
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created: browser key")).to_be_visible()
    secret = page.locator("#secret").input_value()
    assert secret.startswith("sk-")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-secret")).to_have_text("Copied")
    snap(page, "developer-key-secret")

    client = OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0, timeout=10)
    assert [m.id for m in client.models.list()] == ["demo-llama"]

    page.get_by_role("button", name="Done").click()
    assert secret not in page.content()
    row = page.locator("tr", has_text="browser key")
    expect(row.locator(".key-status")).to_have_text("active")
    row.get_by_role("button", name="Revoke key browser key").click()
    expect(page.get_by_text("is revoked")).to_be_visible()
    expect(page.locator("tr", has_text="browser key").locator(".key-status")).to_have_text("revoked")
    with pytest.raises(AuthenticationError):
        client.models.list()


def test_finance_downloads_the_csv_and_the_pdf(page: Page, live_server: object, world: World, tmp_path: Path) -> None:
    base = str(live_server)
    invoice = world.invoice
    assert invoice is not None and invoice.number
    sign_in(page, base, world.users[Role.FINANCE].email)
    page.goto(f"{base}/t/acme/")
    page.get_by_role("navigation", name="Tenant").get_by_role("link", name="Billing").click()
    with page.expect_download() as csv_download:
        page.get_by_role("button", name="Invoices (CSV)").click()
    csv_path = tmp_path / "invoices.csv"
    csv_download.value.save_as(csv_path)
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["invoice_number"] for r in rows] == [invoice.number]
    page.get_by_role("link", name=invoice.number, exact=True).click()
    with page.expect_download() as pdf_download:
        page.get_by_role("button", name="Download PDF").click()
    pdf_path = tmp_path / "invoice.pdf"
    pdf_download.value.save_as(pdf_path)
    text = "".join(p.extract_text() for p in PdfReader(pdf_path).pages)
    assert invoice.number in text
    assert rows[0]["total"] in text
    snap(page, "finance-invoice")


@pytest.fixture
def phone(browser_context_args: dict[str, object]) -> None:
    browser_context_args.update(viewport={"width": 375, "height": 740})


def test_the_layout_holds_at_phone_width_and_works_by_keyboard(
    phone: None, page: Page, live_server: object, world: World
) -> None:
    base = str(live_server)
    page.goto(f"{base}/login/")
    # Keyboard only: the email field has the focus, Tab reaches the password, Enter signs in.
    expect(page.get_by_label("Email")).to_be_focused()
    page.keyboard.type(world.users[Role.OWNER].email)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/t/acme/")
    # The first Tab on a page reaches the skip link, which jumps past the navigation.
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    for path in ("/t/acme/", "/t/acme/keys/", "/t/acme/members/", "/t/acme/usage/", "/t/acme/billing/"):
        page.goto(f"{base}{path}")
        expect(page.locator("h1").first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at phone width"
        snap(page, "phone" + path.replace("/", "-").rstrip("-"))


def test_audit_filters_reload_the_table_in_place(page: Page, live_server: object, world: World) -> None:
    base = str(live_server)
    sign_in(page, base, world.users[Role.ADMIN].email)
    page.goto(f"{base}/t/acme/audit/")
    results = page.locator("#audit-results")
    expect(results).to_contain_text("key.create")
    page.evaluate("window.__sameDocument = true")
    page.get_by_label("Action").fill("invitation")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{base}/t/acme/audit/?action=invitation&actor=&start=&end=")
    expect(results).to_contain_text("invitation.create")
    expect(results).not_to_contain_text("key.create")
    # HTMX swapped the table: the page itself was not reloaded.
    assert page.evaluate("window.__sameDocument === true")
    page.get_by_label("From").fill("2030-01-02")
    page.get_by_label("To (inclusive, UTC)").fill("2030-01-01")
    page.get_by_role("button", name="Filter").click()
    expect(results.get_by_role("alert")).to_contain_text("The end date is before the start date.")


def test_an_invitee_sees_tenant_and_role_then_joins(page: Page, live_server: object, world: World) -> None:
    base = str(live_server)
    _, token = services.invitation_create(
        tenant=world.acme, email="browser-invitee@example.com", role=Role.DEVELOPER, actor=SYSTEM, send=False
    )
    page.goto(f"{base}/invitations/{token}/")
    expect(page.get_by_role("heading", name="Join Acme")).to_be_visible()
    expect(page.locator("#invitation-tenant")).to_have_text("Acme")
    expect(page.locator("#invitation-role")).to_have_text("Developer")
    snap(page, "invitation-accept")
    page.get_by_label("Your name").fill("Browser Invitee")
    page.get_by_label("Choose a password").fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Join Acme").click()
    expect(page.get_by_text("You joined Acme as developer.")).to_be_visible()
    # The link is used up: opening it again explains instead of offering the form.
    response = page.goto(f"{base}/invitations/{token}/")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Invitation not valid")).to_be_visible()
    expect(page.locator("#invitation-invalid")).to_contain_text("wrong, has expired or was already used")
    expect(page.locator("#accept-form")).to_have_count(0)


def test_staff_read_service_levels_and_cost_and_download_the_csv(
    page: Page, live_server: object, world: World, tmp_path: Path
) -> None:
    base = str(live_server)
    sign_in(page, base, world.staff.email)
    page.goto(f"{base}/platform/")
    tabs = page.get_by_role("navigation", name="Platform")
    tabs.get_by_role("link", name="Service levels").click()
    expect(page.get_by_role("heading", name="Service levels, all tenants")).to_be_visible()
    row = page.locator("#slo-table tr[data-tenant='acme']")
    expect(row).to_have_count(1)
    expect(row.locator(".budget-availability")).to_have_text("100.000%")
    tabs.get_by_role("link", name="Cost").click()
    expect(page.locator("#cost-table tr[data-key='acme']")).to_have_count(1)
    page.get_by_label("By").select_option("model")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#cost-table tr[data-key='demo-llama']")).to_have_count(1)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    path = tmp_path / "cost.csv"
    download.value.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["dimension"], r["key"], r["requests"]) for r in rows] == [("model", "demo-llama", "1")]
    snap(page, "staff-cost")
    # A bad month is a clear message on the page, not an error page.
    page.get_by_label("Month (YYYY-MM)").fill("2026-13")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#page-error")).to_contain_text("is not a valid month")
