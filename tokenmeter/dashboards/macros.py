"""Turn a panel's SQL (Grafana's macro dialect) into parameterised ClickHouse SQL.

Grafana expands ``$__conditionalAll(condition, $var)`` and ``${var:singlequote}`` in the
browser and grafana-clickhouse-datasource expands ``$__timeFilter(c)``, ``$__timeInterval(c)``,
``$__fromTime``, ``$__toTime`` and ``$__interval_s`` on its server. :func:`bind` does both for
tokenmeter's own page, with every value (filter values, times, interval) passed as a
ClickHouse query parameter, never pasted into the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from tokenmeter.errors import TokenmeterError

# Interval steps for time series, as Grafana picks them: the smallest that keeps a panel
# under MAX_POINTS points (the counters are per minute, so never below a minute).
INTERVAL_STEPS: Final = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_POINTS: Final = 200

Selection = Mapping[str, Sequence[str]]  # variable -> chosen values; missing or empty = All


class MacroError(TokenmeterError, ValueError):
    """A panel's SQL uses a macro or variable this expander cannot fill in."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_seconds: int = 60

    @property
    def from_s(self) -> int:
        return int(self.start.timestamp())

    @property
    def to_s(self) -> int:
        return int(self.end.timestamp())

    @classmethod
    def with_auto_interval(cls, start: datetime, end: datetime) -> TimeRange:
        seconds = max((end - start).total_seconds(), 60)
        step = next((s for s in INTERVAL_STEPS if seconds / s <= MAX_POINTS), INTERVAL_STEPS[-1])
        return cls(start, end, step)


def conditional_all(sql: str, is_all: Callable[[str], bool]) -> str:
    """``$__conditionalAll(condition, $var)``: ``1=1`` when ``var`` is All, else the condition."""
    marker = "$__conditionalAll("
    while (start := sql.find(marker)) >= 0:
        depth, index, comma = 1, start + len(marker), -1
        while depth:
            if index >= len(sql):
                raise MacroError(f"unbalanced $__conditionalAll( at {start}")
            char = sql[index]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif char == "," and depth == 1:
                comma = index
            index += 1
        if comma < 0:
            raise MacroError(f"$__conditionalAll at {start} has no variable")
        condition = sql[start + len(marker) : comma].strip()
        name = sql[comma + 1 : index - 1].strip().lstrip("$").strip("{}")
        sql = sql[:start] + ("1=1" if is_all(name) else condition) + sql[index:]
    return sql


TIME_FILTER: Final = re.compile(r"\$__timeFilter\(([^)]+)\)")
TIME_INTERVAL: Final = re.compile(r"\$__timeInterval\(([^)]+)\)")
SINGLEQUOTE_VARIABLE: Final = re.compile(r"\$\{(\w+):singlequote\}")


def bind(sql: str, selection: Selection, span: TimeRange) -> tuple[str, dict[str, object]]:
    """The SQL with macros expanded and the parameters it needs (for ``client.query(sql, parameters=...)``)."""
    parameters: dict[str, object] = {"tm_from": span.from_s, "tm_to": span.to_s, "tm_interval": span.interval_seconds}
    sql = conditional_all(sql, lambda name: not selection.get(name))

    def values(match: re.Match[str]) -> str:
        name = match.group(1)
        chosen = list(selection.get(name) or ())
        if not chosen:
            raise MacroError(f"${{{name}:singlequote}} outside $__conditionalAll needs a value")
        for index, value in enumerate(chosen):
            parameters[f"v_{name}_{index}"] = str(value)
        return ", ".join(f"{{v_{name}_{index}:String}}" for index in range(len(chosen)))

    sql = SINGLEQUOTE_VARIABLE.sub(values, sql)
    sql = TIME_FILTER.sub(
        lambda m: f"{m.group(1)} >= toDateTime({{tm_from:Int64}}) AND {m.group(1)} <= toDateTime({{tm_to:Int64}})", sql
    )
    sql = TIME_INTERVAL.sub(
        lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), toIntervalSecond({{tm_interval:UInt32}}))", sql
    )
    sql = sql.replace("$__fromTime", "toDateTime({tm_from:Int64})").replace("$__toTime", "toDateTime({tm_to:Int64})")
    sql = sql.replace("$__interval_s", "{tm_interval:UInt32}")
    if "$" in sql:
        raise MacroError(f"unexpanded macro or variable in: {sql[sql.index('$') :][:60]}")
    return sql, parameters
