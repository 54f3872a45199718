# ruff: noqa: S608 - panel SQL is built from this module's own constants; values arrive as macros
"""The Credits board: each wallet account's credits this year, its use, burn-down and projection, and the
top-up requests (docs/credits.md, docs/dashboards.md).

The balance shown is the ledger approximation of :mod:`tokenmeter.dashboards.credit_queries` (said on each
panel); ``GET /v1/credits/wallets`` gives the enforcer's exact numbers. Grafana only: the web page of
``tokenmeter serve`` has its own credits view.
"""

from __future__ import annotations

from typing import Final

from tokenmeter.dashboards.credit_queries import (
    department_filter,
    ledger_rows,
    projection,
    requests,
    standing,
    year_rows,
)
from tokenmeter.dashboards.panels import FORMAT_TIME_SERIES, Board, Panel

APPROXIMATION: Final = (
    "From the ledger: credits = grants, top-ups and finance's adjustments valid now; used = the charges of this "
    "year's closed days (today's usage is charged tomorrow); left = credits - used. Exact while no grant has "
    "expired or rolled over within the year; the enforcer's exact balance is GET /v1/credits/wallets."
)
SHARE_USED_OF_CREDITS: Final = "toFloat64(used) / toFloat64(credits)"
STANDING: Final = f"""
        SELECT account, wallet, subject, credits, used, left,
               if(credits > 0, {SHARE_USED_OF_CREDITS}, NULL) AS share_used
        FROM ({standing()}) WHERE {department_filter()}
        ORDER BY account"""
SHARE_USED: Final = f"""
        SELECT account, {SHARE_USED_OF_CREDITS} AS share_used
        FROM ({standing()}) WHERE credits > 0 AND {department_filter()}
        ORDER BY share_used DESC, account LIMIT 50"""
# Per account and charged day: the charges so far this year against the credits added so far (both cumulative).
BURN_DOWN: Final = f"""
        SELECT time, series, max(value) AS amount FROM (
          SELECT at AS time, account, kind = 'charge' AS is_charge,
                 sum(if(kind = 'charge', amount, toDecimal128(0, 9))) OVER cumulative AS used,
                 sum(if(kind = 'charge', toDecimal128(0, 9), amount)) OVER cumulative AS granted
          FROM ({year_rows()})
          WHERE (kind != 'charge' OR at >= year_start) AND {department_filter()}
          WINDOW cumulative AS (PARTITION BY account ORDER BY at RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        )
        ARRAY JOIN [concat(account, ' used'), concat(account, ' credits')] AS series, [used, granted] AS value
        WHERE is_charge
        GROUP BY time, series ORDER BY time, series"""
DAILY_CHARGES: Final = f"""
        SELECT at AS time, account, sum(amount) AS charged
        FROM ({ledger_rows()})
        WHERE kind = 'charge' AND $__timeFilter(at) AND {department_filter()}
        GROUP BY time, account ORDER BY time, account"""
PROJECTION: Final = f"""
        SELECT account, left, daily_rate, days_left, runs_out_on
        FROM ({projection()}) WHERE {department_filter()}
        ORDER BY isNull(days_left), days_left, account"""
PENDING: Final = f"""
        SELECT account, amount, requester, created_at AS created, expires_at AS expires, levels_approved,
               approved_by, reason, request_id
        FROM ({requests()}) WHERE state = 'pending' AND {department_filter()}
        ORDER BY created, request_id"""
TOP_UPS: Final = f"""
        SELECT t.at AS approved_at, t.account AS account, t.amount AS amount, t.actor AS approved_by,
               r.requester AS requester, t.reason AS reason, t.entry_id AS entry_id
        FROM ({ledger_rows()}) AS t
        LEFT JOIN (SELECT concat('top_up:', request_id) AS entry_id, account, any(requester) AS requester
                   FROM credit_request_events GROUP BY account, request_id) AS r
          ON r.account = t.account AND r.entry_id = t.entry_id
        WHERE t.kind = 'top_up' AND $__timeFilter(t.at) AND {department_filter("t.subject")}
        ORDER BY approved_at DESC, entry_id LIMIT 50"""


def credits() -> Board:
    panels = (
        Panel(1, "Credits this year (ledger approximation)", "table", STANDING, grid=(0, 0, 14, 8),
              columns=(("share_used", "percentunit"),), description=APPROXIMATION),
        Panel(2, "Share of this year's credits used", "bargauge", SHARE_USED, grid=(14, 0, 10, 8),
              unit="percentunit", marks=(0.8, 1.0), description=APPROXIMATION),
        Panel(3, "Burn-down this year", "timeseries", BURN_DOWN, fmt=FORMAT_TIME_SERIES, grid=(0, 8, 12, 9),
              description="Per account, on each charged day: the charges so far this year (\"used\") against the "
                          "credits added so far (\"credits\": grants, top-ups and adjustments valid now). "
                          + APPROXIMATION),
        Panel(4, "Daily charges", "timeseries", DAILY_CHARGES, fmt=FORMAT_TIME_SERIES, grid=(12, 8, 12, 9),
              description="What each closed day's usage cost in the wallet's unit (the ledger's charges, dated "
                          "at the day's start in the policy's time zone; late usage adds a further charge)."),
        Panel(5, "When the credits run out", "table", PROJECTION, grid=(0, 17, 24, 7),
              columns=(("runs_out_on", "datetime"),),
              description="At the average daily charge of the 30 days before today (or since the first charge "
                          "in them): days_left = left / daily_rate, rounded down. Empty: no charges in the window. "
                          + APPROXIMATION),
        Panel(6, "Pending top-up requests", "table", PENDING, grid=(0, 24, 24, 7),
              columns=(("created", "datetime"), ("expires", "datetime")),
              description="Requests nobody has decided yet and not expired; levels_approved of the levels the "
                          "amount needs (approve with `tokenmeter credits approve ID` or POST "
                          "/v1/credits/requests/ID/approve)."),
        Panel(7, "Recent top-ups", "table", TOP_UPS, grid=(0, 31, 24, 7), columns=(("approved_at", "datetime"),),
              description="Approved top-ups in the time range: approved_by is the final approver; the reason names "
                          "every approver."),
    )  # fmt: skip
    return Board("tokenmeter-credits", "tokenmeter / Credits", "tokenmeter-credits.json", panels,
                 variables=("department",), time_range=("now/y", "now/y"))  # fmt: skip
