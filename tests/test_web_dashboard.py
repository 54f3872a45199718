"""The web dashboard of `tokenmeter serve`, in headless Chromium, on a store the demo filled.

The store is seeded by `tokenmeter demo` (real instrumentation, serve, enforcer). What the page
shows is compared with the panel API's answer for the same query and with direct queries of
the store (the report's accounting tables, the raw OTLP counter rows, quota_utilisation,
quota_events), made before this test's serve opened the store. Filters are clicked in the page.
A screenshot goes to test-output/ (or $TOKENMETER_TEST_OUTPUT).

Chromium is Debian's (`.ci/run` installs it and sets TOKENMETER_REQUIRE_BROWSER=1, so there a
missing browser fails instead of skipping); Playwright drives it, never downloading its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import httpx
import pytest
from headless_chromium import launched_chromium
from playwright.sync_api import expect
from serve_process import ServeProcess

from tokenmeter.demo.summary import raw_tokens_by
from tokenmeter.reporting import build_usage_report
from tokenmeter.store import open_store
from tokenmeter.web import token_link
from tokenmeter.web.browser import wait_until_drawn

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "web-test-token-'\"<>&+="  # quotes, markup, & + =: the link must encode it, the page pass it through
OUTPUT = Path(os.environ.get("TOKENMETER_TEST_OUTPUT", ROOT / "test-output"))
PANELS = 16  # Overview (6) + Departments and users (6) + the Models board's comparison (2) + Waste (2)


@dataclass
class Expected:
    """Direct store queries, independent of the panel SQL."""

    tokens_by_model: dict[str, int]
    tokens_by_user: dict[str, int]
    calls_by_user: dict[str, int]
    department_of: dict[str, str]
    calls_by_department: dict[str, int]
    raw_tokens_by_user: dict[str, int]
    costs: dict[tuple[str, bool], float]  # (currency, virtual) -> amount
    utilisation: dict[tuple[str, str, str], float]  # (budget, scope, subject) -> ratio
    decision_changes: int


def _live_instance(client: Any) -> str:
    """service.instance.id of the demo's live traffic (today's), not of its backfilled month."""
    (instance,) = client.query(
        "SELECT DISTINCT ResourceAttributes['service.instance.id'] AS instance FROM otel_metrics_sum "
        "WHERE instance LIKE 'demo-%' AND instance NOT LIKE 'demo-history-%'"
    ).result_rows
    return str(instance[0])


def _expected(store_url: str) -> Expected:
    client = open_store(store_url)
    try:
        by_model = build_usage_report(client, "model", "day")
        by_user = build_usage_report(client, "user", "day")
        by_department = build_usage_report(client, "department", "day")
        departments = client.query(
            "SELECT user, any(department) FROM usage_counter_series WHERE user != '' GROUP BY user"
        ).result_rows
        utilisation = client.query(
            "SELECT budget, scope, subject, argMax(ratio, updated_at) FROM quota_utilisation "
            "WHERE resets_at > now() GROUP BY budget, scope, subject"
        ).result_rows
        changes = client.query("SELECT count() FROM quota_events WHERE event = 'decision_changed'").result_rows[0][0]
        return Expected(
            tokens_by_model={row.subject: row.tokens for row in by_model.rows if row.tokens},
            tokens_by_user={row.subject: row.tokens for row in by_user.rows},
            calls_by_user={row.subject: row.calls for row in by_user.rows},
            department_of={str(user): str(department) for user, department in departments},
            # "Calls by department" draws a department's refused calls as a series of their own.
            calls_by_department={
                **{row.subject or "(none)": row.calls for row in by_department.rows},
                **{
                    f"{row.subject or '(none)'} (refused)": row.refused_calls
                    for row in by_department.rows
                    if row.refused_calls
                },
            },
            raw_tokens_by_user=raw_tokens_by(client, "enduser.id", _live_instance(client)),
            costs={(cost.currency, cost.virtual): float(cost.amount) for cost in by_user.totals.costs},
            utilisation={(str(b), str(sc), str(su)): float(r) for b, sc, su, r in utilisation},
            decision_changes=int(changes),
        )
    finally:
        client.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected]:
    directory = tmp_path_factory.mktemp("web") / "demo"
    result = subprocess.run([sys.executable, "-m", "tokenmeter.cli", "demo", "--dir", str(directory), "--scale", "0.3",
                             "--no-dashboard"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return directory, _expected(f"chdb://{directory / 'chdb'}")


@pytest.fixture(scope="module")
def served(seeded: tuple[Path, Expected]) -> Iterator[ServeProcess]:
    # No policy: the enforcer writes no new quota_utilisation rows, so the page shows what the demo left.
    serve = ServeProcess(seeded[0], env={"TOKENMETER_API_TOKEN": TOKEN}).start()
    try:
        yield serve
    finally:
        serve.stop()


def _get(serve: ServeProcess, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{serve.api}{path}", headers=headers, timeout=30)


# --- the API the page uses


def test_the_page_is_public_and_its_data_needs_the_token(served: ServeProcess) -> None:
    page = _get(served, "/", token=None)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("dashboard.js", "charts.js", "format.js", "dashboard.css"):
        asset = _get(served, f"/static/{name}", token=None)
        assert asset.status_code == 200 and asset.content
        # Nothing from the internet: no absolute URL to another origin in what the page loads.
        assert "http://" not in asset.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in asset.text
    assert "https://" not in page.text and "http://" not in page.text
    assert _get(served, "/static/../pyproject.toml", token=None).status_code == 404
    assert _get(served, "/static/secret.txt", token=None).status_code == 404
    for path in ("/v1/dashboard", "/v1/dashboard/filters", "/v1/dashboard/panels/overview/1", "/v1/dashboard/health"):
        assert _get(served, path, token=None).status_code == 401, path
        assert _get(served, path, token="wrong").status_code == 401, path
        assert _get(served, path).status_code == 200, path


def test_the_catalog_lists_the_grafana_panels_without_sql(served: ServeProcess) -> None:
    from tokenmeter.dashboards.panels import departments_and_users, overview
    from tokenmeter.dashboards.quality_panels import comparison_board
    from tokenmeter.dashboards.waste_panels import waste_board

    catalog = _get(served, "/v1/dashboard").json()
    titles = {board["uid"]: [panel["title"] for panel in board["panels"]] for board in catalog["boards"]}
    boards = (overview(), departments_and_users(), comparison_board(), waste_board())
    assert titles == {board.uid: [panel.title for panel in board.panels] for board in boards}
    assert "SELECT" not in str(catalog)


def test_bad_requests_get_clear_errors(served: ServeProcess) -> None:
    assert _get(served, "/v1/dashboard/panels/nope/1").status_code == 404
    missing = _get(served, "/v1/dashboard/panels/overview/99")
    assert missing.status_code == 404 and "no panel" in missing.json()["error"]
    bad_time = _get(served, "/v1/dashboard/panels/overview/1?from=yesterday")
    assert bad_time.status_code == 400 and "'from'" in bad_time.json()["error"]
    backwards = _get(served, "/v1/dashboard/panels/overview/1?from=2000&to=1000")
    assert backwards.status_code == 400 and "after" in backwards.json()["error"]
    too_long = _get(served, "/v1/dashboard/panels/overview/4?user=" + "x" * 300)
    assert too_long.status_code == 400 and "longer than" in too_long.json()["error"]


def test_filter_values_with_quotes_are_bound_not_pasted(served: ServeProcess) -> None:
    hostile = "o'brien\\' OR 1=1 --"
    answer = _get(served, "/v1/dashboard/panels/overview/4", token=TOKEN)
    assert answer.status_code == 200 and answer.json()["rows"]
    filtered = httpx.get(f"{served.api}/v1/dashboard/panels/overview/4", params={"user": hostile},
                         headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
    assert filtered.status_code == 200, filtered.text
    assert filtered.json()["rows"] == []  # no such user, and the quote did not widen the filter


def test_panel_answers_equal_the_store(served: ServeProcess, seeded: tuple[Path, Expected]) -> None:
    expected = seeded[1]
    # Today (UTC), as the report's day: the demo's backfilled month lies before it.
    today = f"?from={int(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp())}"
    rows = _get(served, f"/v1/dashboard/panels/overview/4{today}").json()["rows"]
    assert {user: int(tokens) for user, _dept, tokens, _calls, _refused in rows} == expected.tokens_by_user
    assert expected.tokens_by_user == expected.raw_tokens_by_user  # the report itself equals the raw OTLP rows
    by_model: dict[str, int] = {}
    for _time, model, tokens in _get(served, f"/v1/dashboard/panels/overview/1{today}").json()["rows"]:
        by_model[model] = by_model.get(model, 0) + int(tokens)
    assert by_model == expected.tokens_by_model


def test_health_reports_the_store_and_the_enforcer(served: ServeProcess) -> None:
    health = _get(served, "/v1/dashboard/health").json()
    assert health["store_last_usage_ms"] is not None
    assert 0 <= health["now_ms"] - health["store_last_usage_ms"] < 3_600_000  # the demo wrote minutes ago
    assert health["fail_open"] == {"enforcer": 0, "client": 0}
    assert health["receiver"]["items_accepted"] == 0  # nothing was sent to this serve


# --- the page in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium("the dashboard tests") as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any, served: ServeProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # (a refused token is logged as a failed load: the token test causes that on purpose)
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" and "status of 401" not in message.text else None)  # fmt: skip
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    yield page
    context.close()
    assert not errors, errors  # no script errors, no refused requests (CSP), no failed loads
    # Nothing from elsewhere (no CDN, no web font): every request went to serve (the icon is inline).
    assert requested and all(url.startswith(f"{served.api}/") or url.startswith("data:") for url in requested), [
        url for url in requested if not url.startswith(served.api)
    ]


def _open(page: Any, serve: ServeProcess, view: str = "") -> None:
    """The page with the token handed over as the demo's link does, and ``view`` (range, filters) after it."""
    page.goto(token_link(f"{serve.api}/", TOKEN) + (f"&{view}" if view else ""))
    wait_until_drawn(page)


def _panel(page: Any, board: str, panel_id: int) -> Any:
    return page.locator(f'section.panel[data-board="{board}"][data-panel="{panel_id}"]')


def _legend(page: Any, board: str, panel_id: int) -> dict[str, float]:
    items = _panel(page, board, panel_id).locator(".legend li[data-series]")
    return {items.nth(i).get_attribute("data-series"): float(items.nth(i).locator(".value").get_attribute("data-value"))
            for i in range(items.count())}  # fmt: skip


def _table(page: Any, board: str, panel_id: int) -> list[dict[str, str]]:
    """Each row as column -> data-value (the raw number) or the text shown."""
    rows = _panel(page, board, panel_id).locator("tbody tr")
    table = []
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td[data-column]")
        table.append({cells.nth(j).get_attribute("data-column"): cells.nth(j).get_attribute("data-value") or
                      cells.nth(j).inner_text() for j in range(cells.count())})  # fmt: skip
    return table


def _page_query(page: Any) -> str:
    return page.locator("body").get_attribute("data-query")


def _api_rows(serve: ServeProcess, board: str, panel_id: int, query: str) -> list[list[Any]]:
    return _get(serve, f"/v1/dashboard/panels/{board}/{panel_id}?{query}").json()["rows"]


def _quota_subjects(page: Any) -> set[str]:
    """The budget · subject of every bar in Quota utilisation, checked equal to the rows of the table beside it."""
    gauges = _panel(page, "departments", 1).locator(".gauges li[data-series]")
    bars = {gauges.nth(i).get_attribute("data-series") for i in range(gauges.count())}
    table = {f"{row['budget']} · {row['subject'] or 'organisation'}"
             for row in _table(page, "departments", 2) if "budget" in row}  # fmt: skip
    assert bars == table
    return bars


def _budgets_of(expected: Expected, department: str) -> set[str]:
    """What the quota panels list under a department filter: that department's budget, the budgets of the
    users whose usage is the department's, and the organisation's (and app budgets, which no department owns)."""
    return {f"{budget} · {subject or 'organisation'}" for (budget, scope, subject) in expected.utilisation
            if (scope == "department" and subject == department)
            or (scope == "user" and expected.department_of.get(subject) == department)
            or scope in ("organisation", "app")}  # fmt: skip


def _wait_for_view(page: Any, wanted: str) -> str:
    """Wait until the page asks for a view whose query contains ``wanted`` and every panel has drawn that
    query (the page's own signal: each panel's data-query); the query."""
    expect(page.locator("body")).to_have_attribute("data-query", re.compile(re.escape(wanted)))
    query = _page_query(page)
    expect(page.locator(f'section.panel[data-state=ready][data-query="{query}"]')).to_have_count(PANELS)
    wait_until_drawn(page)
    return query


def _choose(page: Any, filter_name: str, value: str) -> None:
    """Tick one value in a filter list, and wait until every panel is drawn for the new query."""
    before = _page_query(page)
    details = page.locator(f'details.filter[data-filter="{filter_name}"]')
    details.locator("summary").click()
    details.locator("label.option", has_text=value).locator("input").check()
    expect(page.locator("body")).not_to_have_attribute("data-query", before)
    wait_until_drawn(page)
    page.locator("h1").click()  # close the list


def test_the_page_asks_for_the_token_once(page: Any, served: ServeProcess) -> None:
    page.goto(f"{served.api}/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.fill("#token-input", "wrong-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("refused")
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    wait_until_drawn(page)
    expect(dialog).not_to_be_visible()
    expect(page.locator("section.panel[data-state=ready]")).to_have_count(PANELS)
    page.reload()  # kept for the tab: not asked again
    wait_until_drawn(page)
    expect(dialog).not_to_be_visible()
    assert "token" not in page.url  # never in the address


def test_panels_show_the_api_and_store_numbers(page: Any, served: ServeProcess, seeded: tuple[Path, Expected]) -> None:
    expected = seeded[1]
    _open(page, served)
    expect(page.locator("section.panel[data-state=ready]")).to_have_count(PANELS)
    query = _page_query(page)

    # Tokens by model: the legend totals = the API's rows summed = the report's accounting tables.
    legend = _legend(page, "overview", 1)
    api_sum: dict[str, float] = {}
    for _time, model, tokens in _api_rows(served, "overview", 1, query):
        api_sum[model] = api_sum.get(model, 0) + tokens
    assert legend == api_sum
    assert {model: int(tokens) for model, tokens in legend.items()} == expected.tokens_by_model
    first_model = max(expected.tokens_by_model, key=expected.tokens_by_model.__getitem__)
    item = _panel(page, "overview", 1).locator(f'.legend li[data-series="{first_model}"] .value')
    assert item.inner_text() == f"{expected.tokens_by_model[first_model]:,} tokens"  # unit and separators

    # Top users: per-user tokens and calls = the report = the raw OTLP rows.
    users = _table(page, "overview", 4)
    assert {row["user"]: int(float(row["tokens"])) for row in users} == expected.tokens_by_user
    assert {row["user"]: int(float(row["tokens"])) for row in users} == expected.raw_tokens_by_user
    assert {row["user"]: int(float(row["calls"])) for row in users} == expected.calls_by_user

    # Calls by department.
    assert {name: int(calls) for name, calls in _legend(page, "overview", 3).items()} == expected.calls_by_department

    # Real and virtual cost: amounts per currency and kind = the report's cost totals; shown as money.
    costs = {(row["currency"], row["kind"].startswith("virtual")): float(row["cost"])
             for row in _table(page, "overview", 6)}  # fmt: skip
    assert costs.keys() == expected.costs.keys()
    for key, amount in expected.costs.items():
        assert costs[key] == pytest.approx(amount, rel=1e-9, abs=1e-9), key
    cny = _panel(page, "overview", 6).locator("td[data-column=cost]").first.inner_text()
    assert cny.startswith(("CN¥", "$")), cny

    # Quota utilisation bars = quota_utilisation; marks at 80 % and 100 %; levels by the marks.
    bars = _panel(page, "departments", 1).locator(".gauges li[data-series]")
    shown = {bars.nth(i).get_attribute("data-series"): float(bars.nth(i).locator(".value").get_attribute("data-value"))
             for i in range(bars.count())}  # fmt: skip
    wanted = {f"{budget} · {subject or 'organisation'}": ratio for (budget, _scope, subject), ratio
              in expected.utilisation.items()}  # fmt: skip
    assert shown == pytest.approx(wanted)
    assert _panel(page, "departments", 1).locator(".mark.warning").count() == bars.count()
    assert _panel(page, "departments", 1).locator(".mark.limit").count() == bars.count()
    for i in range(bars.count()):
        ratio = float(bars.nth(i).locator(".value").get_attribute("data-value"))
        level = bars.nth(i).get_attribute("data-level")
        assert level == ("over" if ratio >= 1 else "warn" if ratio >= 0.8 else "ok")
        assert bars.nth(i).locator(".value").inner_text().endswith(" %")
    assert shown  # the demo's policy has user, department and organisation budgets

    # Recent quota decisions: the newest decision changes from quota_events.
    decisions = _table(page, "departments", 6)
    assert len(decisions) == min(50, expected.decision_changes) > 0
    assert {row["decision"] for row in decisions} <= {"allow", "warn", "downgrade", "degrade", "deny"}

    # The pipeline strip: last data from the store, no fail-open.
    strip = page.locator("#health")
    expect(strip.locator("[data-health=last]")).to_contain_text("ago")
    assert strip.locator("[data-health=fail-open]").get_attribute("data-value") == "0"
    assert strip.locator("[data-health=rate]").get_attribute("data-value") is not None

    # The Models board's comparison (the demo rates no answer): the API's rows, money in each row's currency, no
    # interval without ratings, and the notes and verdicts as text.
    for panel_id in (6, 7):
        assert len(_table(page, "models", panel_id)) == len(_api_rows(served, "models", panel_id, query)) > 0
    quality = _table(page, "models", 6)
    assert {(row["note"], row["rated_answers"], row["ci_low"], row["ci_high"]) for row in quality} == {
        ("too few ratings", "0", "–", "–")}  # fmt: skip
    per_answer = _panel(page, "models", 6).locator("td[data-column=cost_per_answer]").all_inner_texts()
    assert per_answer and all(text.startswith(("CN¥", "$")) or text == "–" for text in per_answer), per_answer
    assert {row["verdict"] for row in _table(page, "models", 7)} == {"too few ratings"}

    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "web-dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_filters_change_the_numbers(page: Any, served: ServeProcess, seeded: tuple[Path, Expected]) -> None:
    expected = seeded[1]
    _open(page, served)
    department = "研发部"
    members = {user for user, dept in expected.department_of.items() if dept == department}

    _choose(page, "department", department)
    query = _page_query(page)
    assert parse_qs(query)["department"] == [department]
    users = _table(page, "overview", 4)
    assert {row["user"] for row in users} == members
    assert {row["user"]: int(float(row["tokens"])) for row in users} == {u: expected.tokens_by_user[u] for u in members}
    assert {row["user"]: int(float(row["tokens"])) for row in users} == {
        row[0]: int(row[2]) for row in _api_rows(served, "overview", 4, query)
    }
    assert {k: int(v) for k, v in _legend(page, "overview", 3).items()} == {
        name: calls for name, calls in expected.calls_by_department.items() if name.split(" (")[0] == department
    }
    # The department's own budget, its users' budgets and the organisation's; no other department's.
    assert _quota_subjects(page) == _budgets_of(expected, department)
    assert "department=" in page.url  # the view is in the address

    user = sorted(members)[0]
    _choose(page, "user", user)
    assert [row["user"] for row in _table(page, "overview", 4)] == [user]
    assert int(float(_table(page, "overview", 4)[0]["tokens"])) == expected.tokens_by_user[user]

    page.reload()  # the filters come back from the address
    wait_until_drawn(page)
    assert [row["user"] for row in _table(page, "overview", 4)] == [user]
    assert page.locator('details.filter[data-filter="user"] .filter-value').inner_text() == user


def test_model_filter_and_time_range(page: Any, served: ServeProcess, seeded: tuple[Path, Expected]) -> None:
    expected = seeded[1]
    model = sorted(expected.tokens_by_model)[0]
    _open(page, served, f"range=15m&model={model}")
    legend = _legend(page, "overview", 1)
    assert {name: int(value) for name, value in legend.items()} == {model: expected.tokens_by_model[model]}
    assert page.locator("#range").input_value() == "15m"

    # A custom range before the demo ran: nothing in it.
    page.select_option("#range", "custom")
    expect(page.locator("#custom-range")).to_be_visible()
    page.fill("#range-from", "2020-01-01T00:00")
    page.fill("#range-to", "2020-01-02T00:00")
    before = _page_query(page)
    page.click("#range-apply")
    expect(page.locator("body")).not_to_have_attribute("data-query", before)
    wait_until_drawn(page)
    assert _legend(page, "overview", 1) == {}
    expect(_panel(page, "overview", 4).locator("td.empty")).to_have_text("no data in this range")


# --- the issue after a user's try: the quota table's width, the department filter, the address


@pytest.mark.parametrize("width", [1400, 1920])
def test_the_quota_table_fits_its_panel(page: Any, served: ServeProcess, width: int) -> None:
    """At 1,400 px "Period to date against the limit" needed a horizontal scroll that hid cost, ratio and reset."""
    page.set_viewport_size({"width": width, "height": 900})
    _open(page, served)
    assert _table(page, "departments", 2)  # the demo's budgets: rows to fit, with a cost limit among them
    # No table on the page scrolls sideways, and neither does the page.
    overflowing = page.evaluate("""() => [...document.querySelectorAll(".table-wrap")]
        .filter((wrap) => wrap.scrollWidth > wrap.clientWidth)
        .map((wrap) => wrap.closest("section.panel").querySelector("h3").textContent)""")
    assert overflowing == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    panel = _panel(page, "departments", 2)
    wrap = panel.locator(".table-wrap").bounding_box()
    assert wrap["x"] >= 0 and wrap["x"] + wrap["width"] <= width
    for column in ("used_cost", "limit_cost", "ratio", "resets_at"):
        heading = panel.locator("th", has_text=re.compile(f"^{column.replace('_', ' ')}$"))
        cells = panel.locator(f"td[data-column={column}]")
        assert cells.count() == len(_table(page, "departments", 2))
        for box in [heading.bounding_box(), *(cells.nth(i).bounding_box() for i in range(cells.count()))]:
            # Inside the viewport and inside the table's frame (not scrolled out of its sight).
            assert box["x"] >= 0 and box["x"] + box["width"] <= min(width, wrap["x"] + wrap["width"]) + 0.5, column
        # Nothing cut inside a cell either.
        assert cells.evaluate_all("(cells) => cells.every((cell) => cell.scrollWidth <= cell.clientWidth)"), column
    costs = [text for text in panel.locator("td[data-column=limit_cost]").all_inner_texts() if text != "–"]
    assert costs and all(text.startswith(("CN¥", "$")) for text in costs)  # the cost limit shows, as money


def test_a_department_filter_lists_only_its_users_budgets(
    page: Any, served: ServeProcess, seeded: tuple[Path, Expected]
) -> None:
    """With the filter on 研发部, the quota panels listed 销售部's per-user budgets too."""
    from tokenmeter.enforcer.policy import load_policy

    expected = seeded[1]
    # The data: per-user budgets in the policy, users of both departments with a budget row each.
    policy = load_policy(ROOT / "tokenmeter" / "demo" / "policy.yaml")
    assert any(budget.scope == "user" and budget.subject is None for budget in policy.budgets)
    with_budget = {subject for (_budget, scope, subject) in expected.utilisation if scope == "user"}
    research = {user for user in with_budget if expected.department_of.get(user) == "研发部"}
    sales = {user for user in with_budget if expected.department_of.get(user) == "销售部"}
    assert research and sales

    _open(page, served, f"department={quote('研发部')}")
    listed = _quota_subjects(page)
    assert listed == _budgets_of(expected, "研发部")
    assert not {subject for subject in listed if subject.split(" · ")[1] in sales | {"销售部"}}, listed
    assert {f"per-user-paid · {user}" for user in research} <= listed
    # The API answers the same for the same query (the page adds nothing of its own).
    query = _page_query(page)
    assert {row[0] for row in _api_rows(served, "departments", 1, query)} == listed
    assert {row[2] for row in _api_rows(served, "departments", 2, query) if row[1] == "user"} == research


def test_editing_the_address_changes_the_view_without_a_reload(
    page: Any, served: ServeProcess, seeded: tuple[Path, Expected]
) -> None:
    """Changing the filters in the address (#department=...) did nothing until a reload."""
    expected = seeded[1]
    _open(page, served)
    everything = _quota_subjects(page)
    assert everything == {f"{budget} · {subject or 'organisation'}" for (budget, _scope, subject)
                          in expected.utilisation}  # fmt: skip
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads

    for department in ("研发部", "销售部"):
        page.evaluate("hash => { location.hash = hash; }", f"#department={quote(department)}")
        query = _wait_for_view(page, f"department={quote(department)}")
        members = {user for user, dept in expected.department_of.items() if dept == department}
        assert _quota_subjects(page) == _budgets_of(expected, department)
        assert {row["user"] for row in _table(page, "overview", 4)} == members
        assert page.locator('details.filter[data-filter="department"] .filter-value').inner_text() == department
        assert parse_qs(query)["department"] == [department]
        assert "range=1h" in page.url  # the address is written back whole

    page.evaluate("hash => { location.hash = hash; }", "#range=6h")  # the filter cleared, another range
    _wait_for_view(page, "from=")
    expect(page.locator("#range")).to_have_value("6h")
    assert "department" not in _page_query(page)
    assert _quota_subjects(page) == everything

    page.go_back()  # Back returns to the previous view, in the same page
    _wait_for_view(page, f"department={quote('销售部')}")
    assert _quota_subjects(page) == _budgets_of(expected, "销售部")
    assert page.evaluate("() => window.sameDocument") is True
