"""Open the dashboard in headless Chromium (Playwright driving the system's Chromium) and wait until it is drawn.

Used by `tokenmeter demo --screenshot` (the README's picture) and by the browser tests. Playwright's
own browser download is never used: ``TOKENMETER_CHROMIUM`` or the first Chromium on the PATH
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tokenmeter.errors import TokenmeterError
from tokenmeter.web import token_link

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Headless, and nothing that would reach out to Google's services from a closed network.
CHROMIUM_ARGS: Final = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions",
)  # fmt: skip
CHROMIUM_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "chrome")
DRAW_TIMEOUT_MS: Final = 30_000


class BrowserError(TokenmeterError, RuntimeError):
    """No usable Chromium or Playwright; the message names the install step."""


def chromium_executable() -> str:
    configured = os.environ.get("TOKENMETER_CHROMIUM")
    if configured:
        if not Path(configured).is_file():
            raise BrowserError(f"TOKENMETER_CHROMIUM={configured} is not a file")
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("no Chromium found: install Debian's `chromium` (apt-get install chromium) or set "
                       "TOKENMETER_CHROMIUM to a Chromium or Chrome executable")  # fmt: skip


@contextmanager
def dashboard_page(
    url: str, token: str | None = None, width: int = 1440, height: int = 900, view: str = ""
) -> Iterator[Page]:
    """The page at ``url`` (``http://127.0.0.1:9400/``), token handed over in the fragment after the ``view``'s
    parameters (``range=30d``), fully drawn."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserError("Playwright is not installed: pip install 'tokenmeter-otel[browser]'") from None
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(token_link(url, token, view) if token else f"{url}#{view}" if view else url)
            if token:
                wait_until_drawn(page)
            yield page
        finally:
            browser.close()


def wait_until_drawn(page: Page) -> None:
    """Every panel and the health strip have answered (drawn or shown their error)."""
    from playwright.sync_api import expect

    page.wait_for_selector("section.panel", timeout=DRAW_TIMEOUT_MS)
    expect(page.locator("section.panel[data-state=loading]")).to_have_count(0, timeout=DRAW_TIMEOUT_MS)
    expect(page.locator("#health[data-state]")).to_have_count(1, timeout=DRAW_TIMEOUT_MS)


def screenshot(url: str, token: str, path: Path, width: int = 1440, view: str = "") -> Path:
    """A full-page PNG of the drawn dashboard (``view``: fragment parameters such as ``range=30d``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with dashboard_page(url, token, width=width, view=view) as page:
        page.screenshot(path=str(path), full_page=True)
    return path
