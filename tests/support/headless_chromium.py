"""Debian's Chromium for the browser tests: its path, or the test skips (fails under TOKENMETER_REQUIRE_BROWSER,
which `.ci/run` sets, so CI never passes by skipping them)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tokenmeter.web.browser import CHROMIUM_ARGS, BrowserError, chromium_executable


def chromium_or_skip(what: str) -> str:
    """The Chromium executable; without one, skip ``what`` (or fail it when a browser is required)."""
    try:
        return chromium_executable()
    except BrowserError as exc:
        if os.environ.get("TOKENMETER_REQUIRE_BROWSER"):
            pytest.fail(f"no browser for {what}: {exc}")
        pytest.skip(f"no browser for {what}: {exc}")


@contextlib.contextmanager
def launched_chromium(what: str) -> Iterator[Any]:
    """Headless Chromium driven by Playwright for ``what``, closed afterwards (skipped without a browser)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip(what)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield chromium
        finally:
            chromium.close()
