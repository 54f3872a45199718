"""The web page's data: the Overview, Departments-and-users, model comparison and Waste panels, with the page's
range and filters.

Only the panels defined in :mod:`tokenmeter.dashboards.panels` run here, with their values bound
as query parameters; nothing else reaches the store from the page. The panels read
tokenmeter's own tables (usage counters per minute, quota utilisation and events, the
per-call table's decision counts), and answer grouped numbers, never single calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.dashboards.macros import Selection, TimeRange, bind
from tokenmeter.dashboards.panels import Board, Panel, departments_and_users, overview, variable_query
from tokenmeter.dashboards.quality_panels import comparison_board
from tokenmeter.dashboards.waste_panels import waste_board
from tokenmeter.errors import TokenmeterError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The page's boards, by the short name its URLs use.
WEB_BOARDS: Final[Mapping[str, Board]] = {"overview": overview(), "departments": departments_and_users(),
                                          "models": comparison_board(),  # Models: its comparison panels
                                          "waste": waste_board()}  # repeated prompts, cache replay  # fmt: skip
PAGE_FILTERS: Final = ("department", "user", "model")  # the variables the page lets one pick (app stays All)
DEFAULT_RANGE: Final = timedelta(hours=24)
MAX_RANGE: Final = timedelta(days=400)
MAX_VALUES_PER_FILTER: Final = 200
MAX_VALUE_LENGTH: Final = 256


class RequestError(TokenmeterError, ValueError):
    """The page asked for something that cannot be answered (400, with this message)."""


@dataclass(frozen=True)
class PanelQuery:
    span: TimeRange
    selection: Selection


def catalog() -> dict[str, Any]:
    """The boards and panels the page draws (no SQL: the page asks for data by board and panel id)."""
    return {
        "boards": [
            {"name": name, "uid": board.uid, "title": board.title,
             "panels": [_panel_entry(panel) for panel in board.panels]}
            for name, board in WEB_BOARDS.items()
        ],
        "filters": list(PAGE_FILTERS),
    }  # fmt: skip


def _panel_entry(panel: Panel) -> dict[str, Any]:
    return {
        "id": panel.id, "title": panel.title, "kind": panel.kind, "unit": panel.unit,
        "description": panel.description, "columns": panel.column_units(), "marks": list(panel.marks),
        "grid": dict(zip("xywh", panel.grid, strict=True)), "time_series": panel.fmt == 0,
    }  # fmt: skip


def find_panel(board_name: str, panel_id: str) -> Panel:
    board = WEB_BOARDS.get(board_name)
    if board is None:
        raise LookupError(f"no board {board_name!r}; boards: {', '.join(WEB_BOARDS)}")
    try:
        return board.panel(int(panel_id))
    except (KeyError, ValueError):
        raise LookupError(f"board {board_name!r} has no panel {panel_id!r}") from None


def parse_panel_query(params: Mapping[str, str], multi: Mapping[str, Sequence[str]],
                      now: datetime | None = None) -> PanelQuery:  # fmt: skip
    """``from`` / ``to`` (Unix seconds or ISO 8601; default the last 24 hours) and repeated filter values."""
    now = now or datetime.now(UTC)
    end = _instant(params.get("to"), "to") or now
    start = _instant(params.get("from"), "from") or end - DEFAULT_RANGE
    if end <= start:
        raise RequestError(f"'to' ({end.isoformat()}) must be after 'from' ({start.isoformat()})")
    if end - start > MAX_RANGE:
        raise RequestError(f"the range may span at most {MAX_RANGE.days} days")
    selection: dict[str, list[str]] = {}
    for name in multi:
        if name not in PAGE_FILTERS:
            continue
        values = [value for value in multi[name] if value != ""]
        if len(values) > MAX_VALUES_PER_FILTER:
            raise RequestError(f"at most {MAX_VALUES_PER_FILTER} values for {name}")
        if any(len(value) > MAX_VALUE_LENGTH for value in values):
            raise RequestError(f"a {name} value is longer than {MAX_VALUE_LENGTH} characters")
        if values:
            selection[name] = values
    return PanelQuery(TimeRange.with_auto_interval(start, end), selection)


def _instant(text: str | None, name: str) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise RequestError(f"{name!r} must be Unix seconds or an ISO 8601 time, got {text[:40]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_panel(client: Client, panel: Panel, query: PanelQuery) -> dict[str, Any]:
    """The panel's rows, with column names and ClickHouse types; times as Unix milliseconds."""
    sql, parameters = bind(panel.sql, query.selection, query.span)
    result = client.query(sql, parameters=parameters)
    types = [column_type.name for column_type in result.column_types]
    return {
        "columns": [{"name": name, "type": type_name} for name, type_name in zip(result.column_names, types,
                                                                                  strict=True)],
        "rows": [[json_value(value) for value in row] for row in result.result_rows],
        "range": {"from": query.span.from_s, "to": query.span.to_s, "interval_seconds": query.span.interval_seconds},
    }  # fmt: skip


def json_value(value: object) -> object:
    """A store value as JSON: numbers stay numbers (Decimal cost as float), times as Unix milliseconds."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def filter_values(client: Client) -> dict[str, list[str]]:
    """What each filter offers: the values the usage series have."""
    return {name: [str(row[0]) for row in client.query(variable_query(name)).result_rows]
            for name in PAGE_FILTERS}  # fmt: skip


LAST_USAGE_SQL: Final = "SELECT max(minute), count() > 0 FROM usage_counter_minutely"


def last_usage_minute(client: Client) -> int | None:
    """The newest minute with usage in the store (Unix ms), also when a production collector writes it."""
    newest, any_rows = client.query(LAST_USAGE_SQL).result_rows[0]
    return json_value(newest) if any_rows else None  # type: ignore[return-value]
