"""What a department's monthly statement reads from the store: its usage by user and model, and its wallets' ledger.

The month runs from local midnight to local midnight in the policy's time zone, the zone the ledger's daily
charges are cut in, so the usage and the charges cover the same days. The daily table's days are UTC days,
so the month is read from the minutely table (kept 400 days), with the counter rule of
:mod:`tokenmeter.store.counter_increase`. Values are bound parameters; the statement itself is built by the
pure :func:`tokenmeter.credits.statement.build_statement`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from tokenmeter import semconv
from tokenmeter.credits.statement import PolicyWallet, Statement, StatementMonth, build_statement, department_wallets
from tokenmeter.store.counter_increase import MINUTELY, series_increases, table_rows
from tokenmeter.store.credit_ledger import wallet_entries
from tokenmeter.store.usage_queries import REFUSED_SERIES, CostAmount

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

_BOUND: Final = "DateTime('UTC')"
_USAGE_SQL: Final = """
SELECT user, model, metric, token_type, currency, virtual, refused, toInt64(sum(used)) AS used
FROM ({increases})
GROUP BY user, model, metric, token_type, currency, virtual, refused
ORDER BY user, model
"""


@dataclass
class UserModelUsage:
    """One user's usage of one model in a range; costs per (currency, virtual)."""

    user: str
    model: str
    calls: int = 0  # sent to a model
    refused_calls: int = 0  # refused by a quota before the request: never sent
    input_tokens: int = 0
    output_tokens: int = 0
    costs: list[CostAmount] = field(default_factory=list)


def department_usage_by_user_and_model(
    client: Client, department: str, start: datetime, end: datetime
) -> list[UserModelUsage]:
    """``department``'s usage per (user, model) in ``[start, end)`` (aware, on whole minutes)."""
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None or moment.second or moment.microsecond:
            raise ValueError(f"{name} must be timezone-aware and on a whole minute, got {moment.isoformat()}")
    if end <= start:
        raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
    rows = table_rows(MINUTELY, f"{{end:{_BOUND}}}", "department = {department:String}")
    increases = series_increases(rows, f"{{start:{_BOUND}}}", ("user", "model", "metric", "token_type", "currency",
                                                               "virtual", f"{REFUSED_SERIES} AS refused"))  # fmt: skip
    parameters = {
        "department": department,
        "start": start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "end": end.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    result = client.query(_USAGE_SQL.format(increases=increases), parameters=parameters)
    return _collect(result.result_rows)


def _collect(rows: Sequence[Sequence[object]]) -> list[UserModelUsage]:
    usage: dict[tuple[str, str], UserModelUsage] = {}
    nanos: dict[tuple[str, str], dict[tuple[str, bool], int]] = {}
    for user, model, metric, token_type, currency, virtual, refused, used in rows:
        key = (str(user), str(model))
        entry = usage.setdefault(key, UserModelUsage(*key))
        amount = int(used)  # type: ignore[call-overload]
        if metric == semconv.METRIC_USAGE_CALLS:
            if refused:
                entry.refused_calls += amount
            else:
                entry.calls += amount
        elif metric == semconv.METRIC_USAGE_TOKENS and token_type == semconv.TOKEN_TYPE_INPUT:
            entry.input_tokens += amount
        elif metric == semconv.METRIC_USAGE_TOKENS and token_type == semconv.TOKEN_TYPE_OUTPUT:
            entry.output_tokens += amount
        elif metric == semconv.METRIC_USAGE_COST:
            per = nanos.setdefault(key, {})
            per[(str(currency), bool(virtual))] = per.get((str(currency), bool(virtual)), 0) + amount
    for key, per in nanos.items():
        usage[key].costs = [CostAmount(currency, virtual, Decimal(n) / semconv.COST_UNITS_PER_CURRENCY_UNIT)
                            for (currency, virtual), n in sorted(per.items())]  # fmt: skip
    return list(usage.values())


def read_statement(
    client: Client, department: str, month: StatementMonth, wallets: Sequence[PolicyWallet], now: datetime
) -> Statement:
    """The statement of ``department`` for ``month`` (in the policy's time zone) from the store."""
    usage = department_usage_by_user_and_model(client, department, month.start, month.end)
    accounts = [wallet.account(department) for wallet in department_wallets(wallets, department)]
    ledgers = {account: wallet_entries(client, account) for account in accounts}
    return build_statement(department, month, wallets, usage, ledgers=ledgers, now=now)
