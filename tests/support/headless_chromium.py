"""Debian's Chromium for the browser tests: its path, or the test skips (fails under TOKENMETER_REQUIRE_BROWSER,
which `.ci/run` sets, so CI never passes by skipping them)."""

from __future__ import annotations

import os

import pytest

from tokenmeter.web.browser import BrowserError, chromium_executable


def chromium_or_skip(what: str) -> str:
    """The Chromium executable; without one, skip ``what`` (or fail it when a browser is required)."""
    try:
        return chromium_executable()
    except BrowserError as exc:
        if os.environ.get("TOKENMETER_REQUIRE_BROWSER"):
            pytest.fail(f"no browser for {what}: {exc}")
        pytest.skip(f"no browser for {what}: {exc}")
