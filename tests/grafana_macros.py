"""Expand Grafana dashboard SQL the way Grafana and grafana-clickhouse-datasource do, to run it on chDB.

Browser side first: ``$__conditionalAll(condition, $var)`` becomes ``1=1`` when the variable
is All (or empty), else the condition; variables are substituted (``${var:singlequote}``
quotes each value and escapes quotes with a backslash; ``$var`` / ``${var}`` join the raw
values). Then the plugin's server-side macros, as in its pkg/macros/macros.go:
``$__timeFilter(c)``, ``$__timeInterval(c)``, ``$__fromTime``, ``$__toTime``, ``$__interval_s``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

ALL = None  # a variable set to All


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


def _conditional_all(sql: str, variables: dict[str, list[str] | None]) -> str:
    marker = "$__conditionalAll("
    while (start := sql.find(marker)) >= 0:
        depth, index = 1, start + len(marker)
        comma = -1
        while depth:
            char = sql[index]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif char == "," and depth == 1:
                comma = index
            index += 1
        condition = sql[start + len(marker) : comma].strip()
        name = sql[comma + 1 : index - 1].strip().lstrip("$").strip("{}")
        values = variables.get(name, ALL)
        sql = sql[:start] + ("1=1" if not values else condition) + sql[index:]
    return sql


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand(sql: str, variables: dict[str, list[str] | None], span: TimeRange, all_values: dict[str, list[str]]
           ) -> str:  # fmt: skip
    sql = _conditional_all(sql, variables)

    def values_of(name: str) -> list[str]:
        chosen = variables.get(name, ALL)
        return chosen if chosen else all_values.get(name, [])

    sql = re.sub(r"\$\{(\w+):singlequote\}", lambda m: ",".join(_quoted(v) for v in values_of(m.group(1))) or "''",
                 sql)  # fmt: skip
    sql = re.sub(r"\$\{(\w+)\}|\$(?!__)(\w+)", lambda m: ",".join(values_of(m.group(1) or m.group(2))), sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({span.from_s}) AND {m.group(1)} <= toDateTime({span.to_s})",
                 sql)  # fmt: skip
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL {span.interval_seconds} second)",
                 sql)  # fmt: skip
    sql = sql.replace("$__fromTime", f"toDateTime({span.from_s})").replace("$__toTime", f"toDateTime({span.to_s})")
    sql = sql.replace("$__interval_s", str(span.interval_seconds))
    assert "$" not in sql, f"unexpanded macro or variable: {sql}"
    return sql
