# ruff: noqa: S608 - alert SQL is built from this module's own constants and the store's rule
"""The SQL of the Grafana alert rules, built from the same definitions as the dashboards.

``alert_rules/grafana/tokenmeter-alerts.yaml`` holds the rules (thresholds, labels, contact
points); the ``rawSql`` of each rule's query A is written from here by ``dashboards/build.py``
(:func:`write_queries`), and tests/test_grafana_alerts.py checks the committed file is what it
makes. Counter usage is measured with the store's rule (:mod:`tokenmeter.store.counter_increase`)
and attribute names come from :mod:`tokenmeter.semconv`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from tokenmeter import semconv
from tokenmeter.dashboards.credit_alert_queries import CREDIT_ALERT_QUERIES
from tokenmeter.dashboards.reconcile_panels import RECONCILE_ALERT_QUERIES
from tokenmeter.store.counter_increase import DAILY, increase, metric_list, raw_rows, series_increases, table_rows
from tokenmeter.store.otlp_sql import attribute

_TOKENS: Final = metric_list(semconv.METRIC_USAGE_TOKENS)


def _thresholds_crossed() -> str:
    return """
SELECT budget, scope, subject, max(threshold) AS level FROM quota_events
WHERE event = 'threshold_crossed' AND resets_at > now()
GROUP BY budget, scope, subject"""


def _spend_spike() -> str:
    """Per department: today's tokens against its daily average of the 7 days before (UTC days, as the
    table's). Per series, each increase against the series' last total before it, so a process running for
    weeks adds only its new usage; only series active in the window are read (GLOBAL: on a cluster the set
    is built once). The week's increase is the increase since 7 days ago minus today's."""
    active = f"series_id GLOBAL IN (SELECT series_id FROM {DAILY} WHERE metric IN ({_TOKENS}) AND day >= utc_today - 7)"
    rows = table_rows(DAILY, "utc_today + 1", f"metric IN ({_TOKENS}) AND {active}")
    return f"""
WITH toDate(now(), 'UTC') AS utc_today
SELECT department, sum(today_used) / (sum(week_used) / 7) AS ratio
FROM (
  SELECT any(department) AS department, {increase("utc_today")} AS today_used,
         ({increase("utc_today - 7")}) - today_used AS week_used
  FROM ({rows})
  GROUP BY series_id
)
WHERE department != ''
GROUP BY department
HAVING sum(week_used) > 0"""


def _no_data() -> str:
    return f"""
SELECT dateDiff('minute', max(TimeUnix), now()) AS minutes_since
FROM otel_metrics_sum WHERE MetricName = '{semconv.METRIC_USAGE_CALLS}'"""


def _failing_open() -> str:
    """Per app: calls its quota client let through unchecked in the last 10 minutes (points of the last hour)."""
    fail_open = f"{attribute('Attributes', semconv.TM_QUOTA_FAIL_OPEN)} = 'true'"
    recent = f"{fail_open} AND TimeUnix >= now() - INTERVAL 1 HOUR"
    rows = raw_rows(semconv.METRIC_QUOTA_DECISIONS, ("ServiceName",), recent)
    unchecked = series_increases(rows, "now() - INTERVAL 10 MINUTE", ("ServiceName AS app",))
    return f"""
SELECT app, sum(used) AS calls FROM ({unchecked}) GROUP BY app"""


# Rule uid -> the SQL of its query A.
ALERT_QUERIES: Final[dict[str, Callable[[], str]]] = {
    "tokenmeter-quota-warning": _thresholds_crossed,
    "tokenmeter-quota-exceeded": _thresholds_crossed,
    "tokenmeter-spend-spike": _spend_spike,
    "tokenmeter-no-data": _no_data,
    "tokenmeter-failing-open": _failing_open,
    **CREDIT_ALERT_QUERIES,
    **RECONCILE_ALERT_QUERIES,
}

# A rule's uid line, then (before the next rule) its folded rawSql block.
_RAW_SQL: Final = re.compile(r"(- uid: (?P<uid>[\w-]+)\n(?:(?!\s+- uid:).*\n)*?(?P<indent> +)rawSql: >-\n)"
                             r"(?P<body>(?:(?P=indent)  .*\n)+)")  # fmt: skip


def write_queries(text: str) -> str:
    """The alert rules file with each rule's rawSql written from :data:`ALERT_QUERIES`."""
    seen: set[str] = set()

    def block(match: re.Match[str]) -> str:
        uid = match.group("uid")
        if uid not in ALERT_QUERIES:
            raise KeyError(f"alert rule {uid} has a rawSql but no query in tokenmeter/dashboards/alert_queries.py")
        seen.add(uid)
        indent = match.group("indent") + "  "
        lines = [line.strip() for line in ALERT_QUERIES[uid]().splitlines() if line.strip()]
        return match.group(1) + "".join(f"{indent}{line}\n" for line in lines)

    written = _RAW_SQL.sub(block, text)
    missing = set(ALERT_QUERIES) - seen
    if missing:
        raise KeyError(f"no rule with a rawSql for {sorted(missing)} in the alert rules file")
    return written
