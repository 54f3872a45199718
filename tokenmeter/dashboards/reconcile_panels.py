# ruff: noqa: S608 - panel SQL is built from this module's own constants; values arrive as macros
"""The Reconciliation board (docs/reconcile.md, docs/dashboards.md) and its alert: per month, provider and model,
what the provider's imported exports billed (``provider_usage``) beside tokenmeter's calls (``llm_usage``).

The semantics are `tokenmeter reconcile`'s, with one difference: SQL has no model catalog, so a call counts for a
provider when the provider has billed its model (its model key, :mod:`tokenmeter.reconcile.model_names`) in any
export imported; the command also counts the calls of models the catalog gives to the provider that it never
billed. Months are the provider's (its days' time zone, from the export tables); a token type is compared in a
month when the provider's exports report it then. Calls: those that ran, not refused by a quota, not answered by
the repeat-answer cache; requests are the calls without an error; cost is tokenmeter's in the provider's currency.
"""

from __future__ import annotations

from typing import Final

from tokenmeter.dashboards.panels import Board, Panel
from tokenmeter.reconcile.comparison import DEFAULT_THRESHOLD
from tokenmeter.reconcile.export_formats import FORMATS
from tokenmeter.reconcile.model_names import model_key_sql
from tokenmeter.reconcile.token_types import (
    AUDIO_INPUT,
    AUDIO_OUTPUT,
    CACHE_WRITE,
    CACHED_INPUT,
    COMPARED,
    COST,
    INPUT,
    OUTPUT,
    REASONING,
    REQUESTS,
)
from tokenmeter.store.usage_queries import CALL_RAN

ZONES: Final = tuple(sorted({table.zone for table in FORMATS}))
# tokenmeter's quantity of each token type, per (provider, month, model key) group of calls.
OURS: Final = (
    (REQUESTS, "countIf(u.error_type = '')"),
    (INPUT, "sum(u.input_tokens)"),
    (CACHED_INPUT, "sum(u.cache_read_input_tokens)"),
    (CACHE_WRITE, "sum(u.cache_creation_input_tokens)"),
    (OUTPUT, "sum(u.output_tokens)"),
    (REASONING, "sum(u.reasoning_output_tokens)"),
    (AUDIO_INPUT, "sum(u.audio_input_tokens)"),
    (AUDIO_OUTPUT, "sum(u.audio_output_tokens)"),
)


def month_of(time: str, zone_column: str) -> str:
    """The first day of ``time``'s month in the zone named by ``zone_column`` (one branch per zone of the export
    tables: ClickHouse takes a time zone only as a constant)."""
    branches = ", ".join(f"{zone_column} = '{zone}', toStartOfMonth(toDate({time}, '{zone}'))" for zone in ZONES)
    return f"multiIf({branches}, toStartOfMonth(toDate({time}, 'UTC')))"


def monthly_sql(months: str, calls_time: str) -> str:
    """Per month, provider, model key and compared token type: tokenmeter's and the provider's totals.
    ``months``: a condition on ``{m}``, a month's first day; ``calls_time``: one on ``u.time`` that holds them."""
    pairs = ", ".join(f"('{name}', toDecimal128({sql}, 12))" for name, sql in OURS)
    return f"""
    WITH billed AS (
        SELECT provider, toStartOfMonth(day) AS month, model_key, token_type, sum(quantity) AS invoice,
               any(currency) AS currency
        FROM provider_usage FINAL WHERE {months.replace("{m}", "toStartOfMonth(day)")}
        GROUP BY provider, month, model_key, token_type
    ),
    reported AS (SELECT DISTINCT provider, month, token_type FROM billed),
    currencies AS (SELECT provider, month, any(currency) AS currency FROM billed WHERE token_type = '{COST}'
                   GROUP BY provider, month),
    billed_keys AS (SELECT DISTINCT provider, day_zone, model_key FROM provider_usage FINAL),
    ours AS (
        SELECT provider, month, model_key, pair.1 AS token_type, pair.2 AS tokenmeter FROM (
            SELECT k.provider AS provider, {month_of("u.time", "k.day_zone")} AS month, k.model_key AS model_key,
                   [{pairs}] AS pairs,
                   sumMapIf([u.currency], [assumeNotNull(u.cost)], NOT u.unpriced AND u.cost IS NOT NULL) AS costs
            FROM llm_usage AS u FINAL
            INNER JOIN billed_keys AS k ON {model_key_sql("u.effective_model")} = k.model_key
            WHERE {calls_time} AND {CALL_RAN.replace("error_type", "u.error_type")} AND NOT u.cache_hit
              AND {months.replace("{m}", month_of("u.time", "k.day_zone"))}
            GROUP BY provider, month, model_key
        ) AS calls LEFT JOIN currencies USING (provider, month)
        ARRAY JOIN arrayPushBack(pairs, ('{COST}', arrayElement(costs.2, indexOf(costs.1, currency)))) AS pair
    )
    /* a side without the key counts 0 (join_use_nulls is off: the missing side's columns are their defaults) */
    SELECT month, provider, model_key, token_type, o.tokenmeter AS tokenmeter, b.invoice AS invoice
    FROM billed AS b FULL OUTER JOIN ours AS o USING (provider, month, model_key, token_type)
    WHERE (provider, month, token_type) IN (SELECT provider, month, token_type FROM reported)"""


TYPE_ORDER: Final = "[" + ", ".join(f"'{name}'" for name in COMPARED) + "]"
RANGE_MONTHS: Final = "{m} >= toStartOfMonth(toDate($__fromTime)) AND {m} <= toStartOfMonth(toDate($__toTime))"
# The range's whole months in UTC, and a day either side for the providers' zones.
RANGE_CALLS: Final = (
    "u.time >= toDateTime(toStartOfMonth(toDate($__fromTime))) - INTERVAL 1 DAY AND "
    "u.time < toDateTime(toStartOfMonth(toDate($__toTime)) + INTERVAL 1 MONTH) + INTERVAL 1 DAY"
)
MONTHLY_DIFFERENCE: Final = f"""
    SELECT formatDateTime(month, '%Y-%m') AS month, provider, model_key AS model, token_type, tokenmeter, invoice,
           tokenmeter - invoice AS difference,
           if(invoice = 0, NULL, round(toFloat64(tokenmeter - invoice) / toFloat64(invoice), 6)) AS relative
    FROM ({monthly_sql(RANGE_MONTHS, RANGE_CALLS)})
    ORDER BY month, provider, model, indexOf({TYPE_ORDER}, token_type)"""

# The alert: per provider, month (this one and the last) and token type, the month's relative difference in
# percent; 100 when the provider billed nothing of a type tokenmeter counted.
ALERT_MONTHS: Final = "{m} >= toStartOfMonth(today() - toIntervalMonth(1))"
ALERT_CALLS: Final = "u.time >= toDateTime(toStartOfMonth(today() - toIntervalMonth(1))) - INTERVAL 1 DAY"


def monthly_difference_alert() -> str:
    """One instance per provider, month and token type: |tokenmeter - invoice| / invoice, in percent."""
    return f"""
SELECT provider, formatDateTime(month, '%Y-%m') AS month, token_type,
if(invoice = 0, if(tokenmeter = 0, 0, 100), abs(toFloat64(tokenmeter - invoice)) * 100 / toFloat64(invoice)) AS percent
FROM (SELECT provider, month, token_type, sum(tokenmeter) AS tokenmeter, sum(invoice) AS invoice
FROM ({monthly_sql(ALERT_MONTHS, ALERT_CALLS)}) GROUP BY provider, month, token_type)"""


RECONCILE_ALERT_QUERIES: Final = {"tokenmeter-invoice-difference": monthly_difference_alert}
MONTHLY_DESCRIPTION: Final = (
    "Per month (the provider's days), provider and model: each token type and the cost its imported exports report "
    "(`tokenmeter reconcile --provider P FILE`), tokenmeter's figure beside the invoice's, the difference (tokenmeter "
    "- invoice: > 0, tokenmeter counted more) and relative = difference / invoice. tokenmeter's calls are those of "
    "models the provider has billed in an export; `tokenmeter reconcile` also lists the calls of models the catalog "
    "gives the provider that it never billed, and the differences per day. The alert fires when a month total "
    f"differs by more than {DEFAULT_THRESHOLD} %."
)
RECONCILE_IDS: Final = (1,)


def reconciliation_board() -> Board:
    panel = Panel(
        RECONCILE_IDS[0],
        "Monthly difference: tokenmeter against the invoice",
        "table",
        MONTHLY_DIFFERENCE,
        grid=(0, 0, 24, 12),
        columns=(("relative", "percentunit"),),
        description=MONTHLY_DESCRIPTION,
    )
    return Board(
        "tokenmeter-reconcile",
        "tokenmeter / Invoice reconciliation",
        "tokenmeter-reconcile.json",
        (panel,),
        variables=(),
        time_range=("now-6M", "now"),
    )
