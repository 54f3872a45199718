"""The Grafana dashboards: built from the panel definitions, well-formed, and every query runs on chDB.

The store is filled by the demo (real instrumentation, serve, counters and spans). Each
panel's SQL and each variable's query is expanded the way Grafana and the ClickHouse
plugin do (tests/support/grafana_macros.py) for All, one value, several values and a value with a
quote, runs on chDB, and returns the columns its panel type needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grafana_macros import ALL, TimeRange, expand

from tokenmeter.dashboards.grafana import build
from tokenmeter.store import open_store

ROOT = Path(__file__).resolve().parents[1]
BUILT = build()
DASHBOARDS: dict[str, dict[str, Any]] = {
    name: json.loads((ROOT / "dashboards" / name).read_text(encoding="utf-8")) for name in BUILT
}
# The demo keeps no credits and imports no provider export: the Credits board's rows are checked in
# tests/test_credit_dashboards.py, the Invoice reconciliation board's in tests/test_reconcile_panels.py.
WITHOUT_DEMO_ROWS = {"tokenmeter-credits.json", "tokenmeter-reconcile.json"}
SELECTIONS: dict[str, dict[str, list[str] | None]] = {
    "all": {},
    "one department": {"department": ["研发部"]},
    "several users": {"user": ["zhang.wei", "li.na"], "department": ALL},
    "a quote in a value": {"model": ["o'brien-model"], "app": ["kb-assistant"]},
}


def test_the_committed_json_is_what_the_builder_makes() -> None:
    for name, text in BUILT.items():
        assert (ROOT / "dashboards" / name).read_text(encoding="utf-8") == text, (
            f"dashboards/{name} is stale: run .venv/bin/python dashboards/build.py"
        )


def test_dashboards_are_well_formed() -> None:
    uids = [board["uid"] for board in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    for name, board in DASHBOARDS.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "grafana-clickhouse-datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "xywh") and grid["x"] + grid["w"] <= 24
            if panel["type"] == "text":  # no query
                assert "targets" not in panel and panel["options"]["content"]
                continue
            for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
                assert ref == {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("dashboards") / "demo"
    result = subprocess.run([sys.executable, "-m", "tokenmeter.cli", "demo", "--dir", str(directory),
                             "--scale", "0.3"], capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    client = open_store(f"chdb://{directory / 'chdb'}")
    try:
        yield client
    finally:
        client.close()


def _span() -> TimeRange:
    now = datetime.now(UTC)
    return TimeRange(now - timedelta(hours=1), now + timedelta(minutes=5), interval_seconds=60)


def _all_values(client: Any, board: dict[str, Any], span: TimeRange) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            rows = client.query(expand(variable["query"], {}, span, {})).result_rows
            values[variable["name"]] = [str(row[0]) for row in rows]
    return values


def test_variable_queries_list_what_the_store_has(seeded: Any) -> None:
    values = _all_values(seeded, DASHBOARDS["tokenmeter-overview.json"], _span())
    assert {"研发部", "销售部", "客服部"} <= set(values["department"])
    assert "zhang.wei" in values["user"] and "qwen-max" in values["model"]


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_every_panel_query_runs_and_returns_its_panels_columns(seeded: Any, selection: str) -> None:
    span = _span()
    for name, board in DASHBOARDS.items():
        all_values = _all_values(seeded, board, span)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                sql = expand(target["rawSql"], SELECTIONS[selection], span, all_values)
                rows = seeded.query(sql).result_rows
                where = f"{name} panel {panel['id']} ({panel['title']}), {selection}"
                # The columns, also when there are no rows.
                columns = [(row[0], str(row[1])) for row in seeded.query(f"DESCRIBE TABLE ({sql})").result_rows]
                numeric = [n for n, t in columns if any(k in t for k in ("Int", "Float", "Decimal"))]
                assert numeric, f"{where}: no numeric column in {columns}"
                if target["format"] == 0:  # time series: a time column first
                    assert columns[0][0] == "time" and "DateTime" in columns[0][1], where
                if selection == "all" and name not in WITHOUT_DEMO_ROWS:
                    assert rows, f"{where}: no rows from the demo's data"


def test_usage_panels_add_up_to_the_report(seeded: Any) -> None:
    """The per-interval increases sum to exactly the totals `tokenmeter report` gives (demo data: this hour)."""
    from tokenmeter.reporting import build_usage_report

    board = DASHBOARDS["tokenmeter-overview.json"]
    span = _span()
    all_values = _all_values(seeded, board, span)
    panels = {panel["id"]: panel for panel in board["panels"]}

    def run(panel_id: int) -> list[tuple[Any, ...]]:
        return seeded.query(expand(panels[panel_id]["targets"][0]["rawSql"], {}, span, all_values)).result_rows

    by_model: dict[str, int] = {}
    for _time, model, tokens in run(1):
        by_model[model] = by_model.get(model, 0) + int(tokens)
    report = build_usage_report(seeded, "model", "day", None)
    assert by_model == {row.subject: row.tokens for row in report.rows if row.tokens}
    by_user = build_usage_report(seeded, "user", "day", None)
    users = {user: (int(tokens), int(sent), int(refused)) for user, _department, tokens, sent, refused in run(4)}
    assert users == {row.subject: (row.tokens, row.calls, row.refused_calls) for row in by_user.rows}
    # Calls by department: calls sent per department, and the calls a quota refused as series of their own.
    sent = sum(int(calls) for _time, department, calls in run(3) if not department.endswith(" (refused)"))
    refused = sum(int(calls) for _time, department, calls in run(3) if department.endswith(" (refused)"))
    assert (sent, refused) == (by_user.totals.calls, by_user.totals.refused_calls)
    assert refused > 0  # the demo's batch-bot is denied


@pytest.mark.parametrize("selection", sorted(SELECTIONS))
def test_bound_queries_return_what_grafana_gets(seeded: Any, selection: str) -> None:
    """The web page's parameterised expansion (bind) returns the same rows as Grafana's pasted-in values."""
    from tokenmeter.dashboards.macros import bind

    span = _span()
    chosen = {name: values for name, values in SELECTIONS[selection].items() if values}
    for name, board in DASHBOARDS.items():
        all_values = _all_values(seeded, board, span)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                grafana_rows = seeded.query(expand(target["rawSql"], SELECTIONS[selection], span, all_values))
                sql, parameters = bind(target["rawSql"], chosen, span)
                assert not [value for values in chosen.values() for value in values if value in sql]  # parameters
                bound_rows = seeded.query(sql, parameters=parameters)
                where = f"{name} panel {panel['id']}, {selection}"
                if "dateDiff('second'" in target["rawSql"]:  # seconds since now(): the two runs may straddle one
                    assert len(bound_rows.result_rows) == len(grafana_rows.result_rows), where
                    continue
                # (rows that tie on ORDER BY may come in either order)
                assert sorted(map(repr, bound_rows.result_rows)) == sorted(map(repr, grafana_rows.result_rows)), where
