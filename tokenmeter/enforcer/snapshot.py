"""Period-to-date usage per (budget, subject) from the store: the decision core's input.

One query per (scope, period) pair of the policy, over ``usage_counter_minutely`` with the
exact counter rule (:mod:`tokenmeter.store.counter_increase`). Periods begin at local midnight
in the policy's time zone, so their bounds are whole minutes but not UTC days: the minutely
table serves.
Rows come back per subject and model, so budgets limited to a model group count only
their models.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from tokenmeter import semconv
from tokenmeter.enforcer.decision import Usage, UsageKey, UsageSnapshot, period_bounds
from tokenmeter.enforcer.policy import Budget, Policy
from tokenmeter.store.counter_increase import MINUTELY, metric_list, series_increases, table_rows

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# Only these column names are ever placed into SQL text; subjects are bound parameters.
_SCOPE_COLUMNS: Final[dict[str, str]] = {"organisation": "''", "department": "department", "user": "user",
                                         "app": "app"}  # fmt: skip

_USAGE_SQL: Final = """
SELECT subject, model_name, metric_name, currency_name, toInt64(sum(used)) AS used
FROM ({increases})
GROUP BY subject, model_name, metric_name, currency_name
"""
_METRICS: Final = metric_list((semconv.METRIC_USAGE_TOKENS, semconv.METRIC_USAGE_COST))


def _usage_sql(column: str, condition: str) -> str:
    rows = table_rows(MINUTELY, "{end:DateTime('UTC')}", f"metric IN ({_METRICS}) AND {condition}")
    columns = (f"{column} AS subject", "model AS model_name", "metric AS metric_name", "currency AS currency_name")
    return _USAGE_SQL.format(increases=series_increases(rows, "{start:DateTime('UTC')}", columns))


def read_snapshot(client: Client, policy: Policy, now: datetime) -> UsageSnapshot:
    """Usage in each budget's current period, for every subject that used any."""
    used: dict[UsageKey, Usage] = defaultdict(Usage)
    period_starts: dict[str, datetime] = {}
    groups: dict[tuple[str, str], list[Budget]] = defaultdict(list)
    for budget in policy.budgets:
        if budget.wallet is None:  # a wallet budget's usage is its wallet's (wallet_accounts)
            groups[(budget.scope, budget.period)].append(budget)
    for (scope, period), budgets in groups.items():
        start, end = period_bounds(period, now, policy.zone)  # type: ignore[arg-type]
        for budget in budgets:
            period_starts[budget.name] = start
        column = _SCOPE_COLUMNS[scope]
        parameters: dict[str, object] = {"start": _sql_time(start), "end": _sql_time(end)}
        condition = "1"
        subjects = {budget.subject for budget in budgets}
        if scope != "organisation" and None not in subjects:  # only named subjects: read only theirs
            condition = f"{column} IN {{subjects:Array(String)}}"
            parameters["subjects"] = sorted(s for s in subjects if s is not None)
        rows = client.query(_usage_sql(column, condition), parameters=parameters).result_rows
        for subject, model, metric, currency, amount in rows:
            usage = _usage(str(metric), str(currency), int(amount))
            for budget in budgets:
                if budget.subject is not None and budget.subject != subject:
                    continue
                if policy.in_group(str(model), budget.models):
                    key = (budget.name, "" if scope == "organisation" else str(subject))
                    used[key] = used[key].plus(usage)
    return UsageSnapshot(used=dict(used), period_starts=period_starts)


def _usage(metric: str, currency: str, amount: int) -> Usage:
    if metric == semconv.METRIC_USAGE_COST:
        return Usage(cost={currency: Decimal(amount) / semconv.COST_UNITS_PER_CURRENCY_UNIT})
    return Usage(tokens=amount)


def _sql_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")
