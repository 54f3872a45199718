"""The way out on the web page, end to end (issue 20): a department whose wallet is at 0 is degraded; a member
opens the page through their SSO proxy and asks for a top-up in the Credits form; the department head opens it
through theirs and approves; the next check is allowed. A request above the second-level amount needs finance too.

Everything is real: `tokenmeter serve` with a wallet policy (and a 60 s refresh, so the top-up reaches the
enforcer because the approval wakes it), headless Chromium driven by Playwright, and one small reverse proxy per
person (tests/support/identity_proxy.py) that adds X-Forwarded-User / X-Forwarded-Groups as an SSO proxy does.
The page's DOM is checked against the API's answers; the checks go straight to serve with the API token.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from headless_chromium import launched_chromium
from identity_proxy import IdentityProxy
from playwright.sync_api import expect
from serve_process import ServeProcess
from waiting import wait_for

from tokenmeter.serve.people import HOW_TO_SEND_A_PERSON
from tokenmeter.web import token_link
from tokenmeter.web.browser import wait_until_drawn

TOKEN = "credit-web-token"
POLICY = """\
version: 1
timezone: Asia/Shanghai
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10, USD: 72}
    yearly_grant: 0
    grant_overrides: {研发部: 0, 销售部: 0}
    approvals:
      approvers: ["dept-heads-{subject}"]
      second_level_above: 50000
      second_level_approvers: [finance]
budgets:
  - {name: dept-credits, wallet: dept-credits, action: degrade}
"""
# Who signs in at each proxy: (user, groups).
PEOPLE = {
    "alice": ("alice", ["研发部"]),
    "dora": ("dora", ["dept-heads-研发部"]),
    "sam": ("sam", ["销售部"]),
    "sid": ("sid", ["dept-heads-销售部"]),
    "fay": ("fay", ["finance"]),
}
ALLOWED_WITHIN_S = 5.0
OUTPUT = Path(os.environ.get("TOKENMETER_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "test-output"))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("credit-web")
    policy = directory / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    process = ServeProcess(directory, ["--policy", str(policy), "--refresh-interval", "60"],
                           {"TOKENMETER_API_TOKEN": TOKEN}).start()  # fmt: skip
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def proxies(serve: ServeProcess) -> Iterator[dict[str, IdentityProxy]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(IdentityProxy(serve.api, user, groups))
               for name, (user, groups) in PEOPLE.items()}  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium("the credits page test") as chromium:
        yield chromium


class Pages:
    """Browser pages, one context each (a person's own tab), with every request and error they caused."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser
        self.contexts: list[Any] = []
        self.errors: list[str] = []
        self.requested: list[str] = []
        self.refusals_expected: set[int] = set()

    def open(self, url: str) -> Any:
        context = self._browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)
        page.on("request", lambda request: self.requested.append(request.url))
        page.goto(url)
        return page

    def _console(self, message: Any) -> None:
        # A refusal the test causes on purpose is logged by Chromium as a failed load; nothing else may be.
        expected = any(f"status of {status}" in message.text for status in self.refusals_expected)
        if message.type == "error" and not expected:
            self.errors.append(message.text)


@pytest.fixture
def pages(browser: Any, serve: ServeProcess, proxies: dict[str, IdentityProxy]) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    for context in opened.contexts:
        context.close()
    assert not opened.errors, opened.errors  # no script error, nothing refused by the page's policy
    origins = [serve.api, *(proxy.url for proxy in proxies.values())]
    assert all(url.startswith(tuple(f"{o}/" for o in origins)) or url.startswith("data:") for url in opened.requested)
    assert not [url for url in opened.requested if TOKEN in url]  # the token never goes into a URL


def _api(serve: ServeProcess, method: str, path: str, person: IdentityProxy | None = None, body: Any = None) -> Any:
    """serve's API called directly, as ``person`` (their proxy's headers) or with the token only."""
    headers: dict[str, Any] = {"authorization": f"Bearer {TOKEN}"}
    if person is not None:
        headers |= {"x-forwarded-user": person.user, "x-forwarded-groups": ",".join(person.groups).encode()}
    return httpx.request(method, f"{serve.api}{path}", headers=headers, json=body, timeout=30)


def _check(serve: ServeProcess, department: str) -> str:
    body = {"user": "someone", "department": department, "app": "kb", "model": "gpt-4o", "input_tokens": 1000,
            "max_output_tokens": 500, "dry_run": True}  # fmt: skip
    answer = _api(serve, "POST", "/v1/check", body=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["decision"])


def _standing(serve: ServeProcess, department: str) -> dict[str, Any]:
    rows = _api(serve, "GET", "/v1/credits/wallets").json()["wallets"]
    (row,) = [row for row in rows if row["subject"] == department]
    return dict(row)


def _open_as(pages: Pages, proxy: IdentityProxy) -> Any:
    page = pages.open(token_link(f"{proxy.url}/", TOKEN))
    _credits_drawn(page)
    return page


def _credits_drawn(page: Any) -> None:
    wait_until_drawn(page)
    expect(page.locator("#credits[data-state=ready]")).to_have_count(1)
    expect(page.locator("#requests[data-state=ready]")).to_have_count(1)


def _row(page: Any, request_id: str) -> Any:
    return page.locator(f'#requests tr[data-request="{request_id}"]')


def _ask_on_the_form(page: Any, amount: str, reason: str) -> str:
    """Fill the form (wallet and department already chosen) and send it twice at once; the request's id."""
    page.fill("#request-amount", amount)
    page.fill("#request-reason", reason)
    page.evaluate("() => { const form = document.getElementById('request-form'); form.requestSubmit(); "
                  "form.requestSubmit(); }")  # a double submit  # fmt: skip
    message = page.locator("#request-message[data-request]")
    expect(message).to_contain_text("pending")
    return str(message.get_attribute("data-request"))


def test_a_member_asks_on_the_page_and_the_head_approves_there(
    pages: Pages, serve: ServeProcess, proxies: dict[str, IdentityProxy]
) -> None:
    member, head = proxies["alice"], proxies["dora"]
    assert _check(serve, "研发部") == "degrade"  # 0 credits this year: top-ups only

    # The member follows the link of the refusal message (TOKENMETER_TOPUP_URL) and gives the token once.
    page = pages.open(f"{member.url}/#request?budget=dept-credits&subject={quote('研发部')}")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    _credits_drawn(page)
    assert "token" not in page.url and "request" not in page.url
    expect(page.locator("#request-wallet")).to_have_value("dept-credits")
    expect(page.locator("#request-subject")).to_have_value("研发部")
    wallet = page.locator('#wallets li[data-account="dept-credits/研发部"]')
    assert wallet.get_attribute("data-level") == "over"
    expect(wallet.locator("[data-figure=outlook]")).to_contain_text("nothing left")
    assert wallet.locator("[data-figure=available]").get_attribute("data-value") == "0"

    posts_before = member.forwarded.count("/v1/credits/requests")
    request_id = _ask_on_the_form(page, "2000", "Q4 reports")
    assert wait_for(lambda: member.forwarded.count("/v1/credits/requests") - posts_before >= 2, timeout=10)
    asked = _api(serve, "GET", "/v1/credits/requests?wallet=dept-credits&subject=研发部", member).json()["requests"]
    assert [(r["id"], Decimal(r["amount"]), r["requester"], r["state"]) for r in asked] == [
        (request_id, Decimal(2000), "alice", "pending")  # two submits, one request
    ]
    row = _row(page, request_id)
    expect(row).to_have_attribute("data-state", "pending")
    expect(row.locator("td[data-column=next]")).to_have_text("dept-heads-研发部")
    expect(row.locator("td[data-column=levels]")).to_have_text("0 of 1")

    # Approving one's own request: the page shows serve's refusal.
    pages.refusals_expected.add(403)
    row.locator("button[data-action=approve]").click()
    refusal = _api(serve, "POST", f"/v1/credits/requests/{request_id}/approve", member)
    assert refusal.status_code == 403
    expect(row.locator("[data-role=refusal]")).to_have_text(f"403: {refusal.json()['error']}")
    assert "alice asked for it and may not approve it" in refusal.json()["error"]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.locator("#credits").screenshot(path=str(OUTPUT / "web-credits.png"))  # the refusal, shown where it happened

    # The head, through their own proxy, sees it pending and approves it.
    boss = _open_as(pages, head)
    pending = _row(boss, request_id)
    expect(pending).to_have_attribute("data-state", "pending")
    expect(pending.locator("td[data-column=requester]")).to_have_text("alice")
    expect(pending.locator("td[data-column=reason]")).to_have_text("Q4 reports")
    assert boss.locator("#requests tbody tr").first.get_attribute("data-request") == request_id  # pending first
    pending.locator("input[name=comment]").fill("ok for Q4")
    approved_at = time.monotonic()
    pending.locator("button[data-action=approve]").click()
    assert wait_for(lambda: _check(serve, "研发部") == "allow", timeout=ALLOWED_WITHIN_S), "not allowed within 5 s"
    print(f"allowed {time.monotonic() - approved_at:.2f} s after the click on Approve")  # docs/web.md
    expect(_row(boss, request_id)).to_have_attribute("data-state", "approved")
    expect(_row(boss, request_id).locator("td[data-column=approved_by]")).to_have_text("dora (level 1: ok for Q4)")

    # The ledger has the top-up; the page's standing says so.
    standing = _standing(serve, "研发部")
    assert (standing["credits"], standing["available"]) == ("2000", "2000")
    done = _api(serve, "GET", f"/v1/credits/requests/{request_id}", member).json()
    assert done["state"] == "approved" and [a["by"] for a in done["approvals"]] == ["dora"]
    boss.click("#refresh")
    wallet = boss.locator('#wallets li[data-account="dept-credits/研发部"]')
    expect(wallet.locator("[data-figure=available]")).to_have_attribute("data-value", "2000")
    expect(wallet.locator("[data-figure=outlook]")).to_have_text(" · no usage yet")
    assert wallet.get_attribute("data-level") == "ok"

    # Last month's statement: fetched with the token in the header, saved as a file.
    link = boss.locator('#statements button[data-department="研发部"][data-format="html"]')
    with boss.expect_download() as download:
        link.click()
    saved = Path(download.value.path()).read_text(encoding="utf-8")
    month = boss.locator("#statement-month").input_value()
    assert re.fullmatch(r"\d{4}-\d{2}", month) and download.value.suggested_filename == f"statement-研发部-{month}.html"
    assert "研发部" in saved and "<html" in saved.lower()


def test_above_the_second_level_amount_finance_approves_too(
    pages: Pages, serve: ServeProcess, proxies: dict[str, IdentityProxy]
) -> None:
    member, head, finance = proxies["sam"], proxies["sid"], proxies["fay"]
    page = _open_as(pages, member)
    page.select_option("#request-wallet", "dept-credits")
    page.fill("#request-subject", "销售部")
    request_id = _ask_on_the_form(page, "60000", "a year of reports")

    boss = _open_as(pages, head)
    _row(boss, request_id).locator("button[data-action=approve]").click()
    first = _row(boss, request_id)
    expect(first.locator("td[data-column=levels]")).to_have_text("1 of 2")
    expect(first).to_have_attribute("data-state", "pending")  # still pending after the head's approval
    expect(first.locator("td[data-column=next]")).to_have_text("finance")
    assert _api(serve, "GET", f"/v1/credits/requests/{request_id}", head).json()["state"] == "pending"
    assert _check(serve, "销售部") == "degrade"

    desk = _open_as(pages, finance)
    row = _row(desk, request_id)
    row.locator("button[data-action=reject]").click()  # without a comment: the page asks for one, sends nothing
    expect(row.locator("[data-role=refusal]")).to_have_text("Say why in the comment to reject.")
    row.locator("button[data-action=approve]").click()
    expect(_row(desk, request_id)).to_have_attribute("data-state", "approved")
    done = _api(serve, "GET", f"/v1/credits/requests/{request_id}", finance).json()
    assert [(a["level"], a["by"]) for a in done["approvals"]] == [(1, "sid"), (2, "fay")]
    assert wait_for(lambda: _standing(serve, "销售部")["credits"] == "60000", timeout=30)


def test_without_a_person_the_page_says_how_to_send_one(pages: Pages, serve: ServeProcess) -> None:
    pages.refusals_expected.add(401)
    page = pages.open(token_link(f"{serve.api}/", TOKEN))  # straight to serve: no proxy, no person
    wait_until_drawn(page)
    expect(page.locator("#requests[data-state=error] [data-role=no-person]")).to_contain_text(HOW_TO_SEND_A_PERSON)
    expect(page.locator("#wallets li[data-account]")).not_to_have_count(0)  # the standing needs only the token
    # A top-up link pasted into the open page fills the form without a reload; an unknown budget says so.
    page.evaluate("hash => { location.hash = hash; }", f"#request?budget=dept-credits&subject={quote('销售部')}")
    expect(page.locator("#request-subject")).to_have_value("销售部")
    page.evaluate("hash => { location.hash = hash; }", "#request?budget=no-such-budget&subject=x")
    expect(page.locator("#request-message")).to_contain_text('No wallet budget named "no-such-budget"')
    page.fill("#request-subject", "研发部")
    page.fill("#request-amount", "10")
    page.fill("#request-reason", "nobody")
    page.click("#request-form button[type=submit]")
    expect(page.locator("#request-message")).to_contain_text(HOW_TO_SEND_A_PERSON)
