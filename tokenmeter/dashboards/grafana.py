"""Grafana dashboard JSON (grafana-clickhouse-datasource) from the panel definitions."""

from __future__ import annotations

import json
from typing import Any, Final

from tokenmeter.dashboards.credit_panels import credits
from tokenmeter.dashboards.panels import ALL_BOARDS, DIMENSIONS, FORMAT_TIME_SERIES, Board, Panel, variable_query
from tokenmeter.dashboards.reconcile_panels import reconciliation_board

DATASOURCE: Final = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
# tokenmeter's units -> Grafana's (costs carry their currency in a column or the series name).
GRAFANA_UNITS: Final = {"tokens": "short", "calls": "short", "cost": "none", "datetime": "dateTimeAsIso"}


def grafana_unit(unit: str) -> str:
    return GRAFANA_UNITS.get(unit, unit)


def target(sql: str, fmt: int, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "editorType": "sql", "rawSql": " ".join(sql.split()),
            "format": fmt, "queryType": "timeseries" if fmt == FORMAT_TIME_SERIES else "table"}  # fmt: skip


def panel_json(panel: Panel) -> dict[str, Any]:
    grid = dict(zip("xywh", panel.grid, strict=True))
    if panel.kind == "text":
        return {"id": panel.id, "type": "text", "title": panel.title, "gridPos": grid,
                "options": {"mode": "markdown", "content": panel.content}}  # fmt: skip
    overrides = [
        {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "unit", "value": grafana_unit(unit)}]}
        for column, unit in panel.columns
        if grafana_unit(unit) not in ("short", "none")
    ]
    defaults: dict[str, Any] = {"unit": grafana_unit(panel.unit)}
    if panel.marks:
        steps = [{"color": "green", "value": None}] + [
            {"color": color, "value": mark} for color, mark in zip(("orange", "red"), panel.marks, strict=False)
        ]
        defaults.update({"min": 0, "max": 1.2, "thresholds": {"mode": "absolute", "steps": steps}})
    return {
        "id": panel.id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": grid, "targets": [target(panel.sql, panel.fmt)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides}, "options": {},
    }  # fmt: skip


def variable(name: str, sql: str) -> dict[str, Any]:
    return {
        "name": name, "label": name, "type": "query", "datasource": DATASOURCE, "query": " ".join(sql.split()),
        "definition": " ".join(sql.split()), "multi": True, "includeAll": True, "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }  # fmt: skip


def variables(dimensions: tuple[str, ...] = DIMENSIONS) -> list[dict[str, Any]]:
    datasource = {"name": "datasource", "label": "data source", "type": "datasource",
                  "query": "grafana-clickhouse-datasource", "current": {}, "hide": 0}  # fmt: skip
    return [datasource] + [variable(column, variable_query(column)) for column in dimensions]


def dashboard_json(board: Board) -> dict[str, Any]:
    return {
        "uid": board.uid, "title": board.title, "tags": ["tokenmeter"], "timezone": "browser", "schemaVersion": 39,
        "version": 1, "editable": False, "time": dict(zip(("from", "to"), board.time_range, strict=True)),
        "refresh": "1m", "templating": {"list": variables(board.variables)}, "annotations": {"list": []},
        "panels": [panel_json(panel) for panel in board.panels],
    }  # fmt: skip


def build() -> dict[str, str]:
    """File name -> JSON text, as committed under dashboards/."""
    boards = [make() for make in (*ALL_BOARDS, credits, reconciliation_board)]
    return {board.file_name: json.dumps(dashboard_json(board), ensure_ascii=False, indent=2) + "\n" for board in boards}
