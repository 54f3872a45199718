# ruff: noqa: S608 - dashboard SQL is built from this file's own constants; Grafana fills in the values
"""Build the Grafana dashboards (JSON for grafana-clickhouse-datasource) from this file.

    .venv/bin/python dashboards/build.py        # rewrites dashboards/*.json

The committed JSON is what Grafana loads (grafana/provisioning/dashboards); a test checks it
equals what this script builds, and runs every panel's SQL on chDB with the plugin's macros
expanded (tests/test_dashboards.py).

Usage over time comes from the cumulative counters (exact, not affected by trace sampling):
per series and minute the largest value (`usage_counter_minutely`), its increase over the
previous minute of the same series, summed per interval. The window runs over each series'
whole history up to the end of the range, so the first minute in range has its predecessor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
DATASOURCE: Final = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
FORMAT_TIME_SERIES: Final = 0
FORMAT_TABLE: Final = 1
DIMENSIONS: Final = ("department", "user", "model", "app")



def filters(model_column: str = "model", **columns_by_variable: str) -> str:
    """The dashboard's variables as conditions on a table with department/user/<model>/app columns
    (or the column expressions given, e.g. ``user="SpanAttributes['enduser.id']"``)."""
    columns = {"department": "department", "user": "user", "model": model_column, "app": "app",
               **columns_by_variable}  # fmt: skip
    return " AND ".join(
        f"$__conditionalAll({column} IN (${{{name}:singlequote}}), ${name})" for name, column in columns.items()
    )


FILTERS: Final = filters()
# quota_utilisation rows are per budget subject: a department budget answers to $department,
# a user budget to $user.
SUBJECT_FILTERS: Final = (
    "($__conditionalAll(scope != 'department' OR subject IN (${department:singlequote}), $department)) AND "
    "($__conditionalAll(scope != 'user' OR subject IN (${user:singlequote}), $user))"
)
LATEST_UTILISATION: Final = f"""
    SELECT budget, scope, subject, any(period) AS period, argMax(used_tokens, updated_at) AS used_tokens,
           argMax(reserved_tokens, updated_at) AS reserved_tokens, argMax(limit_tokens, updated_at) AS limit_tokens,
           argMax(used_cost, updated_at) AS used_cost, argMax(limit_cost, updated_at) AS limit_cost,
           any(currency) AS currency, argMax(ratio, updated_at) AS ratio, any(resets_at) AS resets_at
    FROM (SELECT * FROM quota_utilisation WHERE resets_at > now() AND {SUBJECT_FILTERS})
    GROUP BY budget, scope, subject"""


def increments(metrics: str | tuple[str, ...], columns: str) -> str:
    """Per (series, minute): the counter's increase, with ``metric`` and ``columns`` from usage_counter_minutely."""
    names = (metrics,) if isinstance(metrics, str) else metrics
    wanted = ", ".join(f"'{name}'" for name in names)
    return f"""
    SELECT minute, series_id, metric, {columns},
           value - lagInFrame(value, 1, 0) OVER (PARTITION BY series_id ORDER BY minute
                                                 ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS increase
    FROM (
        SELECT series_id, minute, any(metric) AS metric,
               {", ".join(f"any({c}) AS {c}" for c in columns.split(", "))}, max(value_max) AS value
        FROM (SELECT * FROM usage_counter_minutely
              WHERE metric IN ({wanted}) AND minute <= $__toTime AND {FILTERS})
        GROUP BY series_id, minute
    )"""


def per_interval(metric: str, label: str, value: str, label_sql: str | None = None) -> str:
    """A counter's increase per interval and ``label`` (shown as ``label_sql``, default the column itself)."""
    return f"""
        SELECT $__timeInterval(minute) AS time, {f"{label_sql} AS {label}" if label_sql else label},
               sum(increase) AS {value}
        FROM ({increments(metric, "model, department, user, app")})
        WHERE $__timeFilter(minute)
        GROUP BY time, {label} ORDER BY time"""


DEPARTMENT_OR_NONE: Final = "if(department = '', '(none)', department)"


def target(sql: str, fmt: int, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "editorType": "sql", "rawSql": " ".join(sql.split()),
            "format": fmt, "queryType": "timeseries" if fmt == FORMAT_TIME_SERIES else "table"}  # fmt: skip


def panel(panel_id: int, title: str, kind: str, sql: str, *, fmt: int, grid: tuple[int, int, int, int],
          unit: str = "short", description: str = "") -> dict[str, Any]:  # fmt: skip
    x, y, w, h = grid
    return {
        "id": panel_id, "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": [target(sql, fmt)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {},
    }  # fmt: skip


def variable(name: str, sql: str) -> dict[str, Any]:
    return {
        "name": name, "label": name, "type": "query", "datasource": DATASOURCE, "query": " ".join(sql.split()),
        "definition": " ".join(sql.split()), "multi": True, "includeAll": True, "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }  # fmt: skip


def variables() -> list[dict[str, Any]]:
    datasource = {"name": "datasource", "label": "data source", "type": "datasource",
                  "query": "grafana-clickhouse-datasource", "current": {}, "hide": 0}  # fmt: skip
    return [datasource] + [
        variable(column, f"SELECT DISTINCT {column} FROM usage_counter_series WHERE {column} != '' ORDER BY {column}")
        for column in DIMENSIONS
    ]


def overview() -> dict[str, Any]:
    tokens_by_model = per_interval("tokenmeter.usage.tokens", "model", "tokens")
    cost_by_currency = f"""
        SELECT $__timeInterval(minute) AS time,
               concat(currency, if(virtual, ' (virtual)', '')) AS currency_kind,
               sum(increase) / 1e9 AS cost
        FROM ({increments("tokenmeter.usage.cost", "currency, virtual, model, department, user, app")})
        WHERE $__timeFilter(minute)
        GROUP BY time, currency_kind ORDER BY time"""
    calls_by_department = per_interval("tokenmeter.usage.calls", "department", "calls", DEPARTMENT_OR_NONE)
    top_users = f"""
        SELECT if(user = '', '(none)', user) AS user, any(department) AS department,
               sumIf(increase, metric = 'tokenmeter.usage.tokens') AS tokens,
               sumIf(increase, metric = 'tokenmeter.usage.calls') AS calls
        FROM ({increments(("tokenmeter.usage.tokens", "tokenmeter.usage.calls"), "user, department")})
        WHERE $__timeFilter(minute)
        GROUP BY user ORDER BY tokens DESC LIMIT 20"""
    source_mix = f"""
        SELECT if(s.usage_source = '', '(unknown)', s.usage_source) AS source, sum(i.increase) AS tokens
        FROM ({increments("tokenmeter.usage.tokens", "department, user, model, app")}) AS i
        INNER JOIN (SELECT series_id, any(usage_source) AS usage_source FROM usage_counter_series
                    GROUP BY series_id) AS s ON i.series_id = s.series_id
        WHERE $__timeFilter(i.minute)
        GROUP BY source ORDER BY tokens DESC"""
    virtual_share = f"""
        SELECT if(virtual, 'virtual (local models)', 'real (invoiced)') AS kind, currency,
               sum(increase) / 1e9 AS cost
        FROM ({increments("tokenmeter.usage.cost", "currency, virtual, department, user, model, app")})
        WHERE $__timeFilter(minute)
        GROUP BY kind, currency ORDER BY kind, currency"""
    panels = [
        panel(1, "Tokens by model", "timeseries", tokens_by_model, fmt=FORMAT_TIME_SERIES, grid=(0, 0, 12, 8),
              description="Billed input + output tokens, from the cumulative usage counters."),
        panel(2, "Cost by currency", "timeseries", cost_by_currency, fmt=FORMAT_TIME_SERIES, grid=(12, 0, 12, 8),
              unit="none", description="Exact costs per currency; local models at their virtual prices."),
        panel(3, "Calls by department", "timeseries", calls_by_department, fmt=FORMAT_TIME_SERIES, grid=(0, 8, 12, 8)),
        panel(4, "Top users", "table", top_users, fmt=FORMAT_TABLE, grid=(12, 8, 12, 8)),
        panel(5, "Where token counts come from", "piechart", source_mix, fmt=FORMAT_TABLE, grid=(0, 16, 12, 8),
              description="server: the model server's usage; tokenizer: the model's own tokenizer; "
                          "estimate: no tokenizer available (labelled)."),
        panel(6, "Real and virtual cost", "table", virtual_share, fmt=FORMAT_TABLE, grid=(12, 16, 12, 8), unit="none"),
    ]  # fmt: skip
    return dashboard("tokenmeter-overview", "tokenmeter / Overview", panels)


def departments_and_users() -> dict[str, Any]:
    utilisation = f"""
        SELECT concat(budget, ' · ', if(subject = '', 'organisation', subject)) AS budget_subject, ratio
        FROM ({LATEST_UTILISATION}) ORDER BY ratio DESC LIMIT 50"""
    versus_limit = f"""
        SELECT budget, scope, subject, period, used_tokens, reserved_tokens, limit_tokens, used_cost, limit_cost,
               currency, ratio, resets_at
        FROM ({LATEST_UTILISATION}) ORDER BY ratio DESC"""
    trend = per_interval("tokenmeter.usage.tokens", "department", "tokens", DEPARTMENT_OR_NONE)
    per_user = f"""
        SELECT if(user = '', '(none)', user) AS user, any(department) AS department,
               sumIf(increase, metric = 'tokenmeter.usage.calls') AS calls,
               sumIf(increase, metric = 'tokenmeter.usage.tokens') AS tokens,
               round(tokens / greatest(calls, 1), 1) AS tokens_per_call
        FROM ({increments(("tokenmeter.usage.tokens", "tokenmeter.usage.calls"), "user, department")})
        WHERE $__timeFilter(minute)
        GROUP BY user ORDER BY tokens DESC"""
    decisions = f"""
        SELECT $__timeInterval(time) AS time, quota_decision AS decision, count() AS calls
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND quota_decision IN ('warn', 'downgrade', 'degrade', 'deny', 'unavailable')
          AND {filters("request_model")}
        GROUP BY time, decision ORDER BY time"""
    panels = [
        panel(1, "Quota utilisation", "bargauge", utilisation, fmt=FORMAT_TABLE, grid=(0, 0, 12, 10),
              unit="percentunit", description="Used plus in-flight, of each budget's limit, this period "
                                              "(as the enforcer sees it; marks at 80 % and 100 %)."),
        panel(2, "Period to date against the limit", "table", versus_limit, fmt=FORMAT_TABLE, grid=(12, 0, 12, 10)),
        panel(3, "Tokens by department", "timeseries", trend, fmt=FORMAT_TIME_SERIES, grid=(0, 10, 12, 8)),
        panel(4, "Users: calls and tokens per call", "table", per_user, fmt=FORMAT_TABLE, grid=(12, 10, 12, 8)),
        panel(5, "Warnings, downgrades and denials", "timeseries", decisions, fmt=FORMAT_TIME_SERIES,
              grid=(0, 18, 24, 8), description="Quota decisions other than allow, from the calls' spans "
                                               "(with trace sampling, a share of them)."),
    ]  # fmt: skip
    panels[0]["fieldConfig"]["defaults"].update({
        "min": 0, "max": 1.2,
        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                     {"color": "orange", "value": 0.8},
                                                     {"color": "red", "value": 1}]},
    })  # fmt: skip
    return dashboard("tokenmeter-departments-users", "tokenmeter / Departments and users", panels)


SPAN_FILTERS: Final = filters(
    "SpanAttributes['gen_ai.request.model']", department="SpanAttributes['tokenmeter.department']",
    user="SpanAttributes['enduser.id']", app="if(SpanAttributes['tokenmeter.app'] != '', "
                                            "SpanAttributes['tokenmeter.app'], ServiceName)",
)


def models() -> dict[str, Any]:
    per_call = f"""
        SELECT model, sumIf(increase, metric = 'tokenmeter.usage.calls') AS calls,
               sumIf(increase, metric = 'tokenmeter.usage.tokens') AS tokens,
               round(tokens / greatest(calls, 1), 1) AS tokens_per_call
        FROM ({increments(("tokenmeter.usage.tokens", "tokenmeter.usage.calls"), "model")})
        WHERE $__timeFilter(minute)
        GROUP BY model ORDER BY tokens DESC"""
    cost_per_call = f"""
        SELECT model, concat(currency, if(virtual, ' (virtual)', '')) AS currency_kind,
               sum(increase) / 1e9 AS cost
        FROM ({increments("tokenmeter.usage.cost", "model, currency, virtual")})
        WHERE $__timeFilter(minute)
        GROUP BY model, currency_kind ORDER BY cost DESC"""
    latency = f"""
        SELECT $__timeInterval(Timestamp) AS time, SpanAttributes['gen_ai.request.model'] AS model,
               quantile(0.95)(Duration) / 1e9 AS p95_seconds
        FROM otel_traces
        WHERE $__timeFilter(Timestamp) AND ScopeName = 'tokenmeter' AND SpanAttributes['gen_ai.operation.name'] = 'chat'
          AND SpanAttributes['tokenmeter.hop'] != 'true' AND {SPAN_FILTERS}
        GROUP BY time, model ORDER BY time"""
    downgrades = f"""
        SELECT request_model AS requested, effective_model AS effective, count() AS calls,
               sum(input_tokens + output_tokens) AS tokens
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND quota_decision = 'downgrade' AND {filters("request_model")}
        GROUP BY requested, effective ORDER BY calls DESC"""
    drift = f"""
        SELECT effective_model AS model, count() AS calls,
               sum(input_tokens + output_tokens) AS server_tokens,
               sum(local_input_tokens + local_output_tokens) AS local_tokens,
               round(local_tokens / greatest(server_tokens, 1) - 1, 4) AS drift
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND usage_source = 'server' AND local_source != '' AND {filters("effective_model")}
        GROUP BY model ORDER BY calls DESC"""
    panels = [
        panel(1, "Tokens per call", "table", per_call, fmt=FORMAT_TABLE, grid=(0, 0, 12, 8)),
        panel(2, "Cost by model", "table", cost_per_call, fmt=FORMAT_TABLE, grid=(12, 0, 12, 8), unit="none"),
        panel(3, "Latency p95 by model", "timeseries", latency, fmt=FORMAT_TIME_SERIES, grid=(0, 8, 24, 8), unit="s",
              description="Chat calls from their spans (hops to your own services left out)."),
        panel(4, "Downgrades: requested -> effective model", "table", downgrades, fmt=FORMAT_TABLE,
              grid=(0, 16, 12, 8)),
        panel(5, "Local count against the server's usage", "table", drift, fmt=FORMAT_TABLE, grid=(12, 16, 12, 8),
              description="Calls counted both ways (all without server usage, a sample of the rest): "
                          "drift = local / server - 1."),
    ]  # fmt: skip
    return dashboard("tokenmeter-models", "tokenmeter / Models", panels)


def raw_counter_increases(metric: str, label: str) -> str:
    """Per (series, minute) increase of a counter straight from ``otel_metrics_sum`` (metrics without a table of
    their own, such as the apps' quota decisions); ``label`` is an attribute expression carried along."""
    return f"""
    SELECT minute, label, value - lagInFrame(value, 1, 0) OVER (PARTITION BY series ORDER BY minute
                                                          ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS increase
    FROM (
        SELECT cityHash64(ServiceName, ResourceAttributes, Attributes, StartTimeUnix) AS series,
               toStartOfMinute(TimeUnix) AS minute, any({label}) AS label, max(Value) AS value
        FROM otel_metrics_sum
        WHERE MetricName = '{metric}' AND TimeUnix <= $__toTime
        GROUP BY series, minute
    )"""


def pipeline_health() -> dict[str, Any]:
    ingest = """
        SELECT time, signal, sum(rows) AS rows FROM (
            SELECT $__timeInterval(Timestamp) AS time, 'spans' AS signal, count() AS rows
            FROM otel_traces WHERE $__timeFilter(Timestamp) GROUP BY time
            UNION ALL
            SELECT $__timeInterval(TimeUnix) AS time, 'counter points' AS signal, count() AS rows
            FROM otel_metrics_sum WHERE $__timeFilter(TimeUnix) GROUP BY time
        ) GROUP BY time, signal ORDER BY time"""
    freshness = """
        SELECT dateDiff('second', max(TimeUnix), now()) AS seconds_since_last_usage
        FROM otel_metrics_sum WHERE MetricName = 'tokenmeter.usage.calls'"""
    decisions = f"""
        SELECT $__timeInterval(minute) AS time, label AS decision, sum(increase) AS calls
        FROM ({raw_counter_increases("tokenmeter.quota.decisions", "Attributes['tokenmeter.quota.decision']")})
        WHERE $__timeFilter(minute)
        GROUP BY time, decision ORDER BY time"""
    fail_open = f"""
        SELECT sumIf(increase, label = 'true') AS calls_unchecked, sum(increase) AS calls_checked_or_not
        FROM ({raw_counter_increases("tokenmeter.quota.decisions", "Attributes['tokenmeter.quota.fail_open']")})
        WHERE $__timeFilter(minute)"""
    panels = [
        panel(1, "Rows ingested", "timeseries", ingest, fmt=FORMAT_TIME_SERIES, grid=(0, 0, 16, 8),
              description="Spans and usage counter points written to ClickHouse per interval."),
        panel(2, "Data freshness", "stat", freshness, fmt=FORMAT_TABLE, grid=(16, 0, 8, 8), unit="s",
              description="Seconds since the last usage counter point arrived (apps export every 60 s by "
                          "default)."),
        panel(3, "Quota decisions the apps received", "timeseries", decisions, fmt=FORMAT_TIME_SERIES,
              grid=(0, 8, 16, 8)),
        panel(4, "Calls let through unchecked (fail open)", "stat", fail_open, fmt=FORMAT_TABLE,
              grid=(16, 8, 8, 8)),
    ]  # fmt: skip
    rejected = {
        "id": 5, "type": "text", "title": "Rejected and retried batches", "gridPos": {"x": 0, "y": 16, "w": 24, "h": 5},
        "options": {"mode": "markdown", "content": (
            "Not in ClickHouse: scrape `/metrics` of `tokenmeter serve` "
            "(`tokenmeter_receiver_requests_total{outcome=\"rejected|throttled|unavailable\"}`) and the "
            "collector's own metrics on port 8888 (`otelcol_exporter_send_failed_*`, "
            "`otelcol_exporter_queue_size`) with Prometheus; docs/alerting.md has rules for them.")},
    }  # fmt: skip
    return dashboard("tokenmeter-pipeline", "tokenmeter / Pipeline health", [*panels, rejected])


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["tokenmeter"], "timezone": "browser", "schemaVersion": 39,
        "version": 1, "editable": False, "time": {"from": "now-24h", "to": "now"}, "refresh": "1m",
        "templating": {"list": variables()}, "annotations": {"list": []}, "panels": panels,
    }  # fmt: skip


DASHBOARDS: Final = {
    "tokenmeter-overview.json": overview,
    "tokenmeter-departments-users.json": departments_and_users,
    "tokenmeter-models.json": models,
    "tokenmeter-pipeline.json": pipeline_health,
}


def build() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {name: json.dumps(make(), ensure_ascii=False, indent=2) + "\n" for name, make in DASHBOARDS.items()}


if __name__ == "__main__":
    for name, text in build().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote dashboards/{name}")
