"""Browser tests: real headless Chromium (Debian's package, launched by path) through Playwright,
against the control plane served by pytest-django's live server.

A failing test leaves a screenshot of its page in test-artifacts/. With MMORCH_SCREENSHOTS=1
every visited page is saved there too, for looking at the layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

# The same small world as the test-client suite (two tenants, a user per role, keys, an invoice).
from tests.frontend.conftest import _dashboard_settings, world  # noqa: F401

CHROMIUM = Path(os.environ.get("MMORCH_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SAVE_ALL = os.environ.get("MMORCH_SCREENSHOTS") == "1"


@pytest.fixture
def clock() -> datetime:
    """The real clock: Chromium keeps its own, and would drop a session cookie that a frozen
    server clock made expire in its past. Nothing here sums usage by calendar."""
    return timezone.now()


# Package scope: Chromium and Playwright's loop stop when the browser tests are done, before
# any other suite runs in the same session.
@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; run `make setup-system`")
    # Playwright's sync API keeps an event loop in this thread while it runs; Django's ORM (used
    # by fixtures and assertions here, never at the same time as a browser call) would refuse to
    # run beside it. Allowed exactly while Playwright runs, so other suites keep Django's check.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as pw:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield pw


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    browser = playwright_instance.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
    )
    yield browser
    browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _artifact_name(nodeid: str, suffix: str = "") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:150]
    return ARTIFACTS / f"{safe}{suffix}.png"


def _context(browser: Browser, **kwargs: Any) -> BrowserContext:
    context = browser.new_context(accept_downloads=True, **kwargs)
    context.set_default_timeout(15_000)
    return context


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    return {"viewport": {"width": 1280, "height": 900}}


@pytest.fixture
def page(
    playwright_instance: Playwright,
    browser: Browser,
    browser_context_args: dict[str, Any],
    request: pytest.FixtureRequest,
) -> Iterator[Page]:
    context = _context(browser, **browser_context_args)
    page = context.new_page()
    # Destructive buttons ask for confirmation; tests answer yes.
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            page.screenshot(path=str(_artifact_name(request.node.nodeid)), full_page=True)
        except Exception as exc:  # the test already failed; keep its own error
            print(f"could not save a screenshot: {exc}")
    context.close()


def snap(page: Page, name: str) -> None:
    """Saves the page when MMORCH_SCREENSHOTS=1 (for reviewing the layout by eye)."""
    if SAVE_ALL:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
