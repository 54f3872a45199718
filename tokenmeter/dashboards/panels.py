# ruff: noqa: S608 - panel SQL is built from this module's own constants; values arrive as macros/parameters
"""Every dashboard panel, once: its title, kind, SQL (in Grafana's macro dialect), units and layout.

Grafana's JSON (:mod:`tokenmeter.dashboards.grafana`, written by ``dashboards/build.py``) and the
web page of ``tokenmeter serve`` (:mod:`tokenmeter.web`) are both made from these definitions, so
a query has one text. The SQL uses the macros of grafana-clickhouse-datasource and Grafana's
variables (``$__timeFilter``, ``$__timeInterval``, ``$__toTime``, ``$__conditionalAll``,
``${var:singlequote}``); :mod:`tokenmeter.dashboards.macros` turns them into parameterised SQL.

Usage comes from the cumulative counters (exact, not affected by trace sampling), measured
with the store's one rule (:mod:`tokenmeter.store.counter_increase`): over the whole range for
tables, per interval for time series. A series' maxima before the range come from whole days of
``usage_counter_daily`` and the rest of the first day, so a short range never reads the whole
history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from tokenmeter import semconv
from tokenmeter.store.counter_increase import (
    interval_increases,
    metric_list,
    range_interval_increases,
    raw_rows,
    series_increases,
)
from tokenmeter.store.counter_increase import range_increases as range_increases_of_counters
from tokenmeter.store.otlp_sql import attribute
from tokenmeter.store.usage_queries import REFUSED_SERIES

TOKENS, CALLS, COST = semconv.METRIC_USAGE_TOKENS, semconv.METRIC_USAGE_CALLS, semconv.METRIC_USAGE_COST
FORMAT_TIME_SERIES: Final = 0  # Grafana's target formats
FORMAT_TABLE: Final = 1
DIMENSIONS: Final = ("department", "user", "model", "app")  # the dashboards' variables

PanelKind = Literal["timeseries", "table", "bargauge", "piechart", "stat", "text"]
# Units the web page formats (Grafana gets the nearest of its own, see grafana.py):
# tokens, calls, cost (currency from a `currency` column or the series' label), percentunit
# (a ratio), s, datetime, short (a plain number), text.
Unit = str


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    kind: PanelKind
    sql: str = ""
    fmt: int = FORMAT_TABLE
    grid: tuple[int, int, int, int] = (0, 0, 12, 8)  # x, y, w, h on Grafana's 24-column grid
    unit: Unit = "short"  # of the values (time series, bar gauge, pie, stat)
    description: str = ""
    columns: tuple[tuple[str, Unit], ...] = ()  # units of a table's columns, by name
    marks: tuple[float, ...] = ()  # bar gauge: warning and limit marks (thresholds)
    content: str = ""  # text panels (markdown)

    def column_units(self) -> dict[str, Unit]:
        return dict(self.columns)


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    file_name: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)
    variables: tuple[str, ...] = DIMENSIONS  # the dimension variables Grafana offers
    time_range: tuple[str, str] = ("now-24h", "now")  # Grafana's default range

    def panel(self, panel_id: int) -> Panel:
        for candidate in self.panels:
            if candidate.id == panel_id:
                return candidate
        raise KeyError(f"{self.uid} has no panel {panel_id}")


def filters(model_column: str = "model", **columns_by_variable: str) -> str:
    """The dashboard's variables as conditions on a table with department/user/<model>/app columns
    (or the column expressions given, e.g. ``user="SpanAttributes['enduser.id']"``)."""
    columns = {"department": "department", "user": "user", "model": model_column, "app": "app",
               **columns_by_variable}  # fmt: skip
    return " AND ".join(
        f"$__conditionalAll({column} IN (${{{name}:singlequote}}), ${name})" for name, column in columns.items()
    )


def variable_query(column: str) -> str:
    """The values a dimension variable offers."""
    return f"SELECT DISTINCT {column} FROM usage_counter_series WHERE {column} != '' ORDER BY {column}"


FILTERS: Final = filters()
# quota_utilisation rows are per budget subject: a department budget answers to $department,
# a user budget to $user and to $department through the departments the user's usage carries
# (quota_utilisation has no department; a user who used several is listed under each).
USERS_OF_DEPARTMENTS: Final = "SELECT user FROM usage_counter_series WHERE department IN (${department:singlequote})"
SUBJECT_FILTERS: Final = (
    "($__conditionalAll(scope != 'department' OR subject IN (${department:singlequote}), $department)) AND "
    f"($__conditionalAll(scope != 'user' OR subject GLOBAL IN ({USERS_OF_DEPARTMENTS}), $department)) AND "
    "($__conditionalAll(scope != 'user' OR subject IN (${user:singlequote}), $user))"
)
LATEST_UTILISATION: Final = f"""
    SELECT budget, scope, subject, any(period) AS period, argMax(used_tokens, updated_at) AS used_tokens,
           argMax(reserved_tokens, updated_at) AS reserved_tokens, argMax(limit_tokens, updated_at) AS limit_tokens,
           argMax(used_cost, updated_at) AS used_cost, argMax(limit_cost, updated_at) AS limit_cost,
           any(currency) AS currency, argMax(ratio, updated_at) AS ratio, any(resets_at) AS resets_at
    FROM (SELECT * FROM quota_utilisation WHERE resets_at > now() AND {SUBJECT_FILTERS})
    GROUP BY budget, scope, subject"""


def _usage_filter(metrics: str | tuple[str, ...]) -> str:
    return f"metric IN ({metric_list(metrics)}) AND {FILTERS}"


def increments(metrics: str | tuple[str, ...], columns: str) -> str:
    """Per (series, interval of the range): the counter's increase, with ``metric`` and ``columns``; the
    interval's start is ``minute``. One row per series and interval instead of one per minute."""
    rule = range_interval_increases("$__fromTime", "$__timeFilter(minute)", "$__timeInterval(minute)",
                                    ("metric", *columns.split(", ")), _usage_filter(metrics))  # fmt: skip
    return f"""
    SELECT bucket AS minute, series_id, metric, {columns}, used AS increase FROM ({rule})"""


def range_increases(metrics: str | tuple[str, ...], columns: str) -> str:
    """Per series with points in the range: the counter's increase over the whole range."""
    rule = range_increases_of_counters("$__fromTime", "$__timeFilter(minute)", ("metric", *columns.split(", ")),
                                       _usage_filter(metrics))  # fmt: skip
    return f"""
    SELECT series_id, metric, {columns}, used AS increase FROM ({rule})"""


def per_interval(metric: str, label: str, value: str, label_sql: str | None = None) -> str:
    """A counter's increase per interval and ``label`` (shown as ``label_sql``, default the column itself)."""
    return f"""
        SELECT $__timeInterval(minute) AS time, {f"{label_sql} AS {label}" if label_sql else label},
               sum(increase) AS {value}
        FROM ({increments(metric, "model, department, user, app")})
        GROUP BY time, {label} ORDER BY time"""


# Calls sent and calls a quota refused before the request (never sent), as two columns.
SENT_AND_REFUSED: Final = (f"sumIf(increase, metric = '{CALLS}' AND NOT refused) AS calls, "
                           f"sumIf(increase, metric = '{CALLS}' AND refused) AS refused_calls")  # fmt: skip


def with_refused(increases: str) -> str:
    """Rows of counter increases (with ``series_id``) and ``refused``: the series counts refused calls."""
    return f"SELECT *, {REFUSED_SERIES} AS refused FROM ({increases})"


def calls_and_tokens(select: str, group_by: str, columns: str) -> str:
    """Calls sent and refused, tokens and tokens per call sent in the range, per ``group_by`` (``select`` names
    the key columns).

    Ordered ties and all (here and in every panel with a LIMIT): the same rows on every run."""
    return f"""
        SELECT {select}, {SENT_AND_REFUSED}, sumIf(increase, metric = '{TOKENS}') AS tokens,
               round(tokens / greatest(calls, 1), 1) AS tokens_per_call
        FROM ({with_refused(range_increases((TOKENS, CALLS), columns))})
        GROUP BY {group_by} ORDER BY tokens DESC, {group_by}"""


DEPARTMENT_OR_NONE: Final = "if(department = '', '(none)', department)"
USAGE_COLUMNS: Final = (("tokens", "tokens"), ("calls", "calls"), ("refused_calls", "calls"),
                        ("tokens_per_call", "tokens"))  # fmt: skip
COST_COLUMNS: Final = (("cost", "cost"), ("used_cost", "cost"), ("limit_cost", "cost"))


def overview() -> Board:
    tokens_by_model = per_interval(TOKENS, "model", "tokens")
    cost_by_currency = f"""
        SELECT $__timeInterval(minute) AS time,
               concat(currency, if(virtual, ' (virtual)', '')) AS currency_kind,
               sum(increase) / 1e9 AS cost
        FROM ({increments(COST, "currency, virtual, model, department, user, app")})
        GROUP BY time, currency_kind ORDER BY time"""
    calls_by_department = per_interval(
        CALLS, "department", "calls", f"concat({DEPARTMENT_OR_NONE}, if({REFUSED_SERIES}, ' (refused)', ''))"
    )
    top_users = f"""
        SELECT if(user = '', '(none)', user) AS user, any(department) AS department,
               sumIf(increase, metric = '{TOKENS}') AS tokens, {SENT_AND_REFUSED}
        FROM ({with_refused(range_increases((TOKENS, CALLS), "user, department"))})
        GROUP BY user ORDER BY tokens DESC, user LIMIT 20"""
    source_mix = f"""
        SELECT if(s.usage_source = '', '(unknown)', s.usage_source) AS source, sum(i.increase) AS tokens
        FROM ({range_increases(TOKENS, "department, user, model, app")}) AS i
        INNER JOIN (SELECT series_id, any(usage_source) AS usage_source FROM usage_counter_series
                    GROUP BY series_id) AS s ON i.series_id = s.series_id
        GROUP BY source ORDER BY tokens DESC, source"""
    virtual_share = f"""
        SELECT if(virtual, 'virtual (local models)', 'real (invoiced)') AS kind, currency,
               sum(increase) / 1e9 AS cost
        FROM ({range_increases(COST, "currency, virtual, department, user, model, app")})
        GROUP BY kind, currency ORDER BY kind, currency"""
    panels = (
        Panel(1, "Tokens by model", "timeseries", tokens_by_model, fmt=FORMAT_TIME_SERIES, grid=(0, 0, 12, 8),
              unit="tokens", description="Billed input + output tokens, from the cumulative usage counters."),
        Panel(2, "Cost by currency", "timeseries", cost_by_currency, fmt=FORMAT_TIME_SERIES, grid=(12, 0, 12, 8),
              unit="cost", description="Exact costs per currency; local models at their virtual prices."),
        Panel(3, "Calls by department", "timeseries", calls_by_department, fmt=FORMAT_TIME_SERIES,
              grid=(0, 8, 12, 8), unit="calls", description="Calls sent to a model; \"(refused)\": calls a "
                                                            "quota stopped before the request (never sent)."),
        Panel(4, "Top users", "table", top_users, grid=(12, 8, 12, 8), columns=USAGE_COLUMNS),
        Panel(5, "Where token counts come from", "piechart", source_mix, grid=(0, 16, 12, 8), unit="tokens",
              description="server: the model server's usage; tokenizer: the model's own tokenizer; "
                          "estimate: no tokenizer available (labelled)."),
        Panel(6, "Real and virtual cost", "table", virtual_share, grid=(12, 16, 12, 8), unit="cost",
              columns=COST_COLUMNS),
    )  # fmt: skip
    return Board("tokenmeter-overview", "tokenmeter / Overview", "tokenmeter-overview.json", panels)


# The quota panels: budgets as the enforcer last wrote them, and the decisions the apps got.
UTILISATION_BARS: Final = f"""
        SELECT concat(budget, ' · ', if(subject = '', 'organisation', subject)) AS budget_subject, ratio
        FROM ({LATEST_UTILISATION}) ORDER BY ratio DESC, budget_subject LIMIT 50"""
UTILISATION_TABLE: Final = f"""
        SELECT budget, scope, subject, period, used_tokens, reserved_tokens, limit_tokens, used_cost, limit_cost,
               currency, ratio, resets_at
        FROM ({LATEST_UTILISATION}) ORDER BY ratio DESC, budget, subject"""
NOT_ALLOWED: Final = f"""
        SELECT $__timeInterval(time) AS time, quota_decision AS decision, count() AS calls
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND quota_decision IN ('warn', 'downgrade', 'degrade', 'deny', 'unavailable')
          AND {filters("request_model")}
        GROUP BY time, decision ORDER BY time"""
# Decision changes per (user, department, app) as the enforcer wrote them (quota_events).
DECISION_CHANGES: Final = f"""
        SELECT time, user, department, app, previous_action AS previous, action AS decision, budget,
               ratio, requested_model, effective_model
        FROM quota_events
        WHERE event = 'decision_changed' AND $__timeFilter(time) AND {filters("requested_model")}
        ORDER BY time DESC, user, department, app LIMIT 50"""


def departments_and_users() -> Board:
    trend = per_interval(TOKENS, "department", "tokens", DEPARTMENT_OR_NONE)
    per_user = calls_and_tokens(
        "if(user = '', '(none)', user) AS user, any(department) AS department", "user", "user, department"
    )
    panels = (
        Panel(1, "Quota utilisation", "bargauge", UTILISATION_BARS, grid=(0, 0, 10, 10), unit="percentunit",
              marks=(0.8, 1.0), description="Used plus in-flight, of each budget's limit, this period "
                                             "(as the enforcer sees it; marks at 80 % and 100 %)."),
        Panel(2, "Period to date against the limit", "table", UTILISATION_TABLE, grid=(10, 0, 14, 10),
              columns=(("used_tokens", "tokens"), ("reserved_tokens", "tokens"), ("limit_tokens", "tokens"),
                       *COST_COLUMNS, ("ratio", "percentunit"), ("resets_at", "datetime"))),
        Panel(3, "Tokens by department", "timeseries", trend, fmt=FORMAT_TIME_SERIES, grid=(0, 10, 12, 8),
              unit="tokens"),
        Panel(4, "Users: calls and tokens per call", "table", per_user, grid=(12, 10, 12, 8), columns=USAGE_COLUMNS),
        Panel(5, "Warnings, downgrades and denials", "timeseries", NOT_ALLOWED, fmt=FORMAT_TIME_SERIES,
              grid=(0, 18, 24, 8), unit="calls", description="Quota decisions other than allow, from the calls' "
                                                              "spans (with trace sampling, a share of them)."),
        Panel(6, "Recent quota decisions", "table", DECISION_CHANGES, grid=(0, 26, 24, 8),
              columns=(("time", "datetime"), ("ratio", "percentunit")),
              description="When the enforcer's answer for a user, department and app changed "
                          "(allow -> warn -> downgrade ...), newest first."),
    )  # fmt: skip
    return Board("tokenmeter-departments-users", "tokenmeter / Departments and users",
                 "tokenmeter-departments-users.json", panels)  # fmt: skip


def _span(key: str) -> str:
    return attribute("SpanAttributes", key)


SPAN_FILTERS: Final = filters(
    _span(semconv.GEN_AI_REQUEST_MODEL),
    department=_span(semconv.TM_DEPARTMENT),
    user=_span(semconv.ENDUSER_ID),
    app=f"if({_span(semconv.TM_APP)} != '', {_span(semconv.TM_APP)}, ServiceName)",
)


def _comparison(top: int) -> tuple[Panel, ...]:
    """The Models board's comparison of models by cost and ratings (its module imports this one: imported here)."""
    from tokenmeter.dashboards.quality_panels import comparison_panels

    return comparison_panels(top)


def models() -> Board:
    per_call = calls_and_tokens("model", "model", "model")
    cost_per_call = f"""
        SELECT model, concat(currency, if(virtual, ' (virtual)', '')) AS currency_kind,
               sum(increase) / 1e9 AS cost
        FROM ({range_increases(COST, "model, currency, virtual")})
        GROUP BY model, currency_kind ORDER BY cost DESC, model, currency_kind"""
    latency = f"""
        SELECT $__timeInterval(Timestamp) AS time, {_span(semconv.GEN_AI_REQUEST_MODEL)} AS model,
               quantile(0.95)(Duration) / 1e9 AS p95_seconds
        FROM otel_traces
        WHERE $__timeFilter(Timestamp) AND ScopeName = 'tokenmeter' AND {_span(semconv.GEN_AI_OPERATION_NAME)} = 'chat'
          AND {_span(semconv.TM_HOP)} != 'true' AND {SPAN_FILTERS}
        GROUP BY time, model ORDER BY time"""
    downgrades = f"""
        SELECT request_model AS requested, effective_model AS effective, count() AS calls,
               sum(input_tokens + output_tokens) AS tokens
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND quota_decision = 'downgrade' AND {filters("request_model")}
        GROUP BY requested, effective ORDER BY calls DESC, requested, effective"""
    drift = f"""
        SELECT effective_model AS model, count() AS calls,
               sum(input_tokens + output_tokens) AS server_tokens,
               sum(local_input_tokens + local_output_tokens) AS local_tokens,
               round(local_tokens / greatest(server_tokens, 1) - 1, 4) AS drift
        FROM llm_usage FINAL
        WHERE $__timeFilter(time) AND usage_source = 'server' AND local_source != '' AND {filters("effective_model")}
        GROUP BY model ORDER BY calls DESC, model"""
    panels = (
        Panel(1, "Tokens per call", "table", per_call, grid=(0, 0, 12, 8), columns=USAGE_COLUMNS),
        Panel(2, "Cost by model", "table", cost_per_call, grid=(12, 0, 12, 8), unit="cost", columns=COST_COLUMNS),
        Panel(3, "Latency p95 by model", "timeseries", latency, fmt=FORMAT_TIME_SERIES, grid=(0, 8, 24, 8), unit="s",
              description="Chat calls from their spans (hops to your own services left out)."),
        Panel(4, "Downgrades: requested -> effective model", "table", downgrades, grid=(0, 16, 12, 8),
              columns=USAGE_COLUMNS),
        Panel(5, "Local count against the server's usage", "table", drift, grid=(12, 16, 12, 8),
              columns=(("calls", "calls"), ("server_tokens", "tokens"), ("local_tokens", "tokens"),
                       ("drift", "percentunit")),
              description="Calls counted both ways (all without server usage, a sample of the rest): "
                          "drift = local / server - 1."),
    )  # fmt: skip
    return Board("tokenmeter-models", "tokenmeter / Models", "tokenmeter-models.json", panels + _comparison(top=24))


def _app_decisions(label_key: str) -> str:
    """The apps' quota decision counter per minute of the range and before, one attribute as ``label``."""
    return raw_rows(semconv.METRIC_QUOTA_DECISIONS, (f"{attribute('Attributes', label_key)} AS label",),
                    "TimeUnix <= $__toTime", time="toStartOfMinute(TimeUnix)")  # fmt: skip


def pipeline_health() -> Board:
    ingest = """
        SELECT time, signal, sum(rows) AS rows FROM (
            SELECT $__timeInterval(Timestamp) AS time, 'spans' AS signal, count() AS rows
            FROM otel_traces WHERE $__timeFilter(Timestamp) GROUP BY time
            UNION ALL
            SELECT $__timeInterval(TimeUnix) AS time, 'counter points' AS signal, count() AS rows
            FROM otel_metrics_sum WHERE $__timeFilter(TimeUnix) GROUP BY time
        ) GROUP BY time, signal ORDER BY time"""
    freshness = f"""
        SELECT dateDiff('second', max(TimeUnix), now()) AS seconds_since_last_usage
        FROM otel_metrics_sum WHERE MetricName = '{CALLS}'"""
    decisions = f"""
        SELECT $__timeInterval(bucket) AS time, label AS decision, sum(used) AS calls
        FROM ({interval_increases(_app_decisions(semconv.TM_QUOTA_DECISION), "$__fromTime", "t", ("label",))})
        GROUP BY time, decision ORDER BY time"""
    fail_open = f"""
        SELECT sumIf(used, label = 'true') AS calls_unchecked, sum(used) AS calls_checked_or_not
        FROM ({series_increases(_app_decisions(semconv.TM_QUOTA_FAIL_OPEN), "$__fromTime", ("label",),
                                having="countIf(t >= $__fromTime) > 0")})"""  # fmt: skip
    rejected = (
        "Not in ClickHouse: scrape `/metrics` of `tokenmeter serve` "
        '(`tokenmeter_receiver_requests_total{outcome="rejected|throttled|unavailable"}`) and the '
        "collector's own metrics on port 8888 (`otelcol_exporter_send_failed_*`, "
        "`otelcol_exporter_queue_size`) with Prometheus; docs/alerting.md has rules for them."
    )
    panels = (
        Panel(1, "Rows ingested", "timeseries", ingest, fmt=FORMAT_TIME_SERIES, grid=(0, 0, 16, 8),
              description="Spans and usage counter points written to ClickHouse per interval."),
        Panel(2, "Data freshness", "stat", freshness, grid=(16, 0, 8, 8), unit="s",
              description="Seconds since the last usage counter point arrived (apps export every 60 s by "
                          "default)."),
        Panel(3, "Quota decisions the apps received", "timeseries", decisions, fmt=FORMAT_TIME_SERIES,
              grid=(0, 8, 16, 8), unit="calls"),
        Panel(4, "Calls let through unchecked (fail open)", "stat", fail_open, grid=(16, 8, 8, 8), unit="calls"),
        Panel(5, "Rejected and retried batches", "text", grid=(0, 16, 24, 5), content=rejected),
    )  # fmt: skip
    return Board("tokenmeter-pipeline", "tokenmeter / Pipeline health", "tokenmeter-pipeline.json", panels)


ALL_BOARDS: Final = (overview, departments_and_users, models, pipeline_health)
