"""The usage page's attribution controls in real Chromium: group by end user, filter by a tag,
through the HTMX swap."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tenants.permissions import Role
from tests.browser.test_dashboard import sign_in
from tests.factories import journal_record, ledger_add
from tests.frontend.conftest import World, this_month_moment

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_usage_page_groups_by_end_user_and_filters_by_tag(page: Page, live_server: object, world: World) -> None:
    at = this_month_moment()
    ledger_add(
        [
            {**journal_record(world.acme, prompt=1_111, at=at), "end_user": "alice", "metadata": {"team": "search"}},
            {**journal_record(world.acme, prompt=2_222, at=at), "end_user": "bob", "metadata": {"team": "ads"}},
        ]
    )
    base = str(live_server)
    sign_in(page, base, world.users[Role.FINANCE].email)
    page.goto(f"{base}/t/acme/usage/")
    form = page.locator("#usage-filters")
    form.locator("select[name=group]").select_option("user")
    form.locator("input[name=tag]").fill("team=search")
    with page.expect_response(lambda r: "/t/acme/usage/" in r.url and r.request.headers.get("hx-request")):
        form.get_by_role("button", name="Show").click()
    table = page.locator("#usage-table")
    expect(table.locator("thead")).to_contain_text("End user")
    expect(table.locator("tbody")).to_contain_text("alice")
    expect(table.locator("tbody")).to_contain_text("1111")
    expect(table.locator("tbody")).not_to_contain_text("bob")
    assert "group=user" in page.url and "tag=team%3Dsearch" in page.url  # the swap pushed the filters
