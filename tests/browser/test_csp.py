"""The dashboard runs under its Content-Security-Policy in real Chromium: walking the main pages
(charts drawn, an HTMX swap done) reports no violation."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from tenants.permissions import Role
from tests.browser.test_dashboard import sign_in
from tests.frontend.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Each document records its violations; the console catches what happens before the listener runs.
_LISTEN = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"} at ${where}`);
});
"""


def _violations(page: Page) -> list[str]:
    found: Any = page.evaluate("window.__cspViolations || []")
    return list(found)


def test_the_main_pages_run_without_csp_violations(page: Page, live_server: object, world: World) -> None:
    base = str(live_server)
    console: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            console.append(message.text)

    page.on("console", on_console)
    page.add_init_script(_LISTEN)
    sign_in(page, base, world.users[Role.OWNER].email)
    seen: dict[str, list[str]] = {}
    for path, chart in (
        ("/t/acme/", "overview-chart"),
        ("/t/acme/usage/", "usage-chart"),
        ("/t/acme/keys/", None),
        ("/t/acme/members/", None),
    ):
        response = page.goto(f"{base}{path}")
        assert response is not None and response.status == 200, path
        assert "default-src 'self'" in (response.headers.get("content-security-policy") or "")
        expect(page.locator("h1").first).to_be_visible()
        if chart is not None:
            # Chart.js drew (it sizes the canvas through the CSSOM, which the policy allows).
            canvas = page.locator(f'canvas[data-chart="{chart}"]')
            page.wait_for_function(
                "(c) => c && c._chart !== undefined && c.width > 0", arg=canvas.element_handle(), timeout=10_000
            )
        if path == "/t/acme/usage/":
            # An HTMX swap (the filters) redraws the chart in place; htmx adds no <style> of its own.
            with page.expect_response(lambda r: "/t/acme/usage/" in r.url and r.request.headers.get("hx-request")):
                page.locator("#usage-filters").get_by_role("button", name="Show").click()
            page.wait_for_function(
                "() => { const c = document.querySelector('canvas[data-chart=usage-chart]'); return c && c._chart; }"
            )
            assert page.evaluate("document.querySelectorAll('style').length") == 0
        seen[path] = _violations(page)
    assert all(not found for found in seen.values()), seen
    assert not console, console
