"""Chinese names on the page are drawn as characters, not as empty boxes.

Chromium draws a character no installed font covers as the same empty box whatever the
character, so two different Chinese characters drawn alike means the machine has no CJK font
(`.ci/run` and `make screenshot` install `fonts-wqy-microhei`; docs/web.md). The characters are
drawn in the dashboard's own font stack, from its stylesheet.
"""

from __future__ import annotations

from pathlib import Path

from headless_chromium import chromium_or_skip

from tokenmeter.web.browser import CHROMIUM_ARGS

STYLESHEET = Path(__file__).resolve().parents[1] / "tokenmeter/web/static/dashboard.css"
# Two department names of the demo, a character apart, and two Latin letters as the control.
SAMPLES = {"research": "研", "sales": "销", "latin_a": "A", "latin_b": "B"}


def _glyph_pictures(executable: str, stylesheet: str) -> dict[str, bytes]:
    from playwright.sync_api import sync_playwright

    spans = "".join(f'<span id="{name}" style="font-size:48px">{text}</span> ' for name, text in SAMPLES.items())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page()
            page.set_content(f"<html><head><style>{stylesheet}</style></head><body>{spans}</body></html>")
            return {name: page.locator(f"#{name}").screenshot() for name in SAMPLES}
        finally:
            browser.close()


def test_chinese_department_names_are_drawn_as_characters() -> None:
    pictures = _glyph_pictures(chromium_or_skip("the font test"), STYLESHEET.read_text(encoding="utf-8"))
    assert pictures["latin_a"] != pictures["latin_b"]  # the comparison itself tells glyphs apart
    assert pictures["research"] != pictures["sales"], (
        "研 and 销 are drawn alike: no CJK font (apt-get install fonts-wqy-microhei)"
    )
