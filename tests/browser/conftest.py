"""Browser tests: Debian's Chromium driven by Playwright against a live web process.

Every page a test opens is watched: a console error or an uncaught exception in the page fails the
test, and so does any request to a host other than the loopback (the console works offline: no
CDN, no fonts or scripts from elsewhere). Screenshots go to test-artifacts/<test name>/.
Without /usr/bin/chromium the tests are skipped, unless REQUIRE_BROWSER is set (CI sets it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture
def browser(live_web):
    """Per test, and started after the test's database set-up (and stopped before its reset):
    Playwright's sync API keeps an event loop on this thread while it runs, and Django's
    per-context connections must not see that loop while the database is set up or reset."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # The test's own ORM calls are plain synchronous code between Playwright's calls; Django would
    # take the loop Playwright keeps on this thread for an async context.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            yield launched
            launched.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


class WatchedPage:
    """A page whose console errors and off-machine requests are collected, with numbered screenshots."""

    def __init__(self, page, folder: Path):
        self.page, self.folder = page, folder
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.shots = 0
        self.expected_failures: set[str] = set()  # documents the test opens knowing they are errors
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.route("**/*", self._route)

    def _console(self, message) -> None:
        url = message.location.get("url", "")
        expected = url in self.expected_failures and "Failed to load resource" in message.text
        if message.type == "error" and not expected:
            self.errors.append(f"console: {message.text} ({url})")

    def goto_error_page(self, path: str, status: int):
        """Open a page that is meant to answer with an error status (the browser logs that as an error)."""
        here = urlsplit(self.page.url)
        self.expected_failures.add(f"{here.scheme}://{here.netloc}{path}")
        response = self.page.goto(path)
        assert response.status == status, response.status
        return response

    def _route(self, route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def shot(self, name: str) -> Path:
        self.shots += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.shots:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def watched(browser, live_web, request):
    context = browser.new_context(base_url=live_web.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = WatchedPage(context.new_page(), ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    yield page
    context.close()
    assert not page.foreign, f"requests left the machine: {page.foreign}"
    assert not page.errors, f"the browser reported errors: {page.errors}"


def sign_in(page, tenant) -> None:
    """Sign the tenant's owner in through the sign-in page, and land on the organization."""
    from tests.conftest import PASSWORD

    page.goto("/sign-in/")
    page.get_by_label("Email").fill(tenant.owner.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/orgs/{tenant.org.slug}/")
