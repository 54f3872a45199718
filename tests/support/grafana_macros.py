"""Expand Grafana dashboard SQL the way Grafana and grafana-clickhouse-datasource do, to run it on chDB.

Browser side first: ``$__conditionalAll`` (tokenmeter.dashboards.macros.conditional_all, the
same rule the web page uses), then variables are pasted in as Grafana does
(``${var:singlequote}`` quotes each value and escapes quotes with a backslash; ``$var`` /
``${var}`` join the raw values). Then the plugin's server-side macros, as in its
pkg/macros/macros.go: ``$__timeFilter(c)``, ``$__timeInterval(c)``, ``$__fromTime``,
``$__toTime``, ``$__interval_s``. tokenmeter's own page binds parameters instead
(tokenmeter.dashboards.macros.bind); this module is the Grafana side of that comparison.
"""

from __future__ import annotations

import re

from tokenmeter.dashboards.macros import TimeRange, conditional_all

ALL = None  # a variable set to All
__all__ = ["ALL", "TimeRange", "expand"]


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand(sql: str, variables: dict[str, list[str] | None], span: TimeRange, all_values: dict[str, list[str]]
           ) -> str:  # fmt: skip
    sql = conditional_all(sql, lambda name: not variables.get(name, ALL))

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
