"""The web page's Waste board on chDB: each panel run as the page runs it (macros bound, values as parameters) over
tests/support/waste_calls.py's November, equal to the values worked out by hand and to `tokenmeter report --waste`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from waste_calls import H1, HOSTILE_USER, LARGE, SMALL, UNKNOWN, store_waste_calls

from tokenmeter.dashboards.macros import TimeRange
from tokenmeter.dashboards.waste_panels import WASTE_IDS, waste_board
from tokenmeter.store.waste_queries import read_waste
from tokenmeter.waste.waste_query import WasteQuery
from tokenmeter.web.panel_data import WEB_BOARDS, PanelQuery, catalog, run_panel

NOVEMBER = TimeRange.with_auto_interval(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path_factory.mktemp('waste-panels') / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        store_waste_calls(client)
        yield client
    finally:
        client.close()


def _rows(store: Any, panel_id: int, selection: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    data = run_panel(store, waste_board().panel(panel_id), PanelQuery(NOVEMBER, selection or {}))
    names = [column["name"] for column in data["columns"]]
    return [dict(zip(names, row, strict=True)) for row in data["rows"]]


def test_repeated_prompts_one_line_per_price(store: Any) -> None:
    rows = [(r["prompt_hash"], r["model"], r["calls"], r["users"], r["currency_kind"], r["cost"], r["unpriced_calls"])
            for r in _rows(store, WASTE_IDS[0])]  # fmt: skip
    assert rows == [
        (H1, SMALL, 5, 2, "CNY", 2.5, 0),
        ("H2", LARGE, 2, 1, "USD", 2.0, 0),
        ("H5", SMALL, 2, 1, "CNY", 1.0, 0),
        ("H4", UNKNOWN, 3, 1, "unpriced", None, 3),  # cost unknown, never 0
    ]


def test_cache_replay_savings(store: Any) -> None:
    rows = [(r["model"], r["calls_with_hash"], r["hits"], r["hit_rate"], r["saved_input_tokens"], r["currency_kind"],
             r["saved_cost"]) for r in _rows(store, WASTE_IDS[1])]  # fmt: skip
    assert rows == [
        (SMALL, 9, 5, 0.5556, 5000, "CNY", 2.5),
        (UNKNOWN, 3, 1, 0.3333, 800, "unpriced", None),
        (LARGE, 2, 0, 0.0, 0, "", None),  # no hits: nothing saved, in no currency
    ]


def test_the_panels_and_the_report_agree(store: Any) -> None:
    report = read_waste(store, WasteQuery.parse(period="2026-11"), None)
    assert [(r["prompt_hash"], r["app"], r["model"], r["calls"], r["input_tokens"]) for r in _rows(store, 1)] == [
        (r.prompt_hash, r.app, r.model, r.spend.calls, r.spend.input_tokens) for r in report.repeated_prompts
    ]
    assert [(r["model"], r["hits"], r["saved_output_tokens"]) for r in _rows(store, 2)] == [
        (r.model, r.hits.calls, r.hits.output_tokens) for r in report.cache]  # fmt: skip


def test_the_page_filters_bind_hostile_values(store: Any) -> None:
    only = {"user": [HOSTILE_USER]}
    assert [(r["prompt_hash"], r["calls"]) for r in _rows(store, 1, only)] == [("H5", 2)]
    assert [(r["model"], r["calls_with_hash"], r["hits"]) for r in _rows(store, 2, only)] == [(SMALL, 2, 1)]
    assert _rows(store, 1, {"department": ["x' OR '1'='1"]}) == []


def test_the_page_lists_the_waste_board() -> None:
    assert WEB_BOARDS["waste"] == waste_board()
    listed = {entry["name"]: entry for entry in catalog()["boards"]}["waste"]
    assert [panel["title"] for panel in listed["panels"]] == [
        "Repeated prompts",
        "Cache replay: what a cache would have saved",
    ]
    assert "SELECT" not in str(listed)
