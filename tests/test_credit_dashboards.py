"""The Credits board on chDB: ledgers and top-up requests written through the store's own functions, each panel's
SQL expanded as Grafana does, and its numbers equal to what the pure core computes (wallet_balance, standing,
projection, fold), exactly.

The board shows a ledger approximation of the balance (tokenmeter/dashboards/credit_queries.py); with no grant
expired or rolled over within the year, as here, it must equal the replay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest
from credit_rows import ACCOUNTS, RULES, ZONE, CreditRows, write_credit_rows
from grafana_macros import TimeRange, expand

from tokenmeter.credits.approvals import fold
from tokenmeter.credits.burn_down import ZERO, wallet_balance
from tokenmeter.credits.charges import standing
from tokenmeter.credits.ledger import LedgerEntry
from tokenmeter.credits.projection import projection
from tokenmeter.dashboards.grafana import build
from tokenmeter.store.credit_ledger import wallet_entries
from tokenmeter.store.credit_requests import events_by_request

ROOT = Path(__file__).resolve().parents[1]
BOARD: dict[str, Any] = json.loads(build()["tokenmeter-credits.json"])
PANELS = {panel["title"]: panel for panel in BOARD["panels"]}


@pytest.fixture(scope="module")
def credit_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, CreditRows]]:
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path_factory.mktemp('credits') / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        yield client, write_credit_rows(client)
    finally:
        client.close()


def _rows(store: Any, title: str, departments: list[str] | None = None, days: int = 60) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    span = TimeRange(now - timedelta(days=days), now + timedelta(minutes=5), interval_seconds=3600)
    sql = expand(PANELS[title]["targets"][0]["rawSql"], {"department": departments}, span, {})
    return [tuple(row) for row in store.query(sql).result_rows]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _core(store: Any, rows: CreditRows, account: str) -> tuple[list[LedgerEntry], Any, Any, Any]:
    now = datetime.now(UTC)
    entries = wallet_entries(store, account)
    balance = wallet_balance(account, entries, now)
    return entries, balance, standing(account, entries, rows.year, now, uncharged=ZERO), \
        projection(entries, balance.available, rows.today, ZONE)  # fmt: skip


def test_the_board_is_generated_with_a_department_variable_and_this_year() -> None:
    assert (ROOT / "dashboards" / "tokenmeter-credits.json").read_text(encoding="utf-8") == build()[
        "tokenmeter-credits.json"
    ]
    assert [variable["name"] for variable in BOARD["templating"]["list"]] == ["datasource", "department"]
    assert BOARD["time"] == {"from": "now/y", "to": "now/y"}
    for title in ("Credits this year (ledger approximation)", "When the credits run out", "Burn-down this year"):
        assert "GET /v1/credits/wallets" in PANELS[title]["description"], title  # says it is an approximation


def test_credits_used_and_left_equal_the_replay(credit_store: tuple[Any, CreditRows]) -> None:
    store, rows = credit_store
    shown = {row[0]: row[3:6] for row in _rows(store, "Credits this year (ledger approximation)")}
    expected = {}
    for account in ACCOUNTS:
        _entries, balance, year, _projection = _core(store, rows, account)
        assert year.available == balance.available
        expected[account] = (year.credits, year.used, year.available)
    assert shown == expected
    assert shown["dept-credits/销售部"] == (Decimal(20000), Decimal(18000), Decimal(2000))  # the duplicate row once
    assert shown["dept-credits/客服部"][2] == Decimal(-1000)
    assert shown["dept-credits/法务部"] == (Decimal(10000), ZERO, Decimal(10000))  # next year's grant not yet
    ratios = dict(_rows(store, "Share of this year's credits used"))
    assert ratios["dept-credits/销售部"] == pytest.approx(0.9) and ratios["dept-credits/客服部"] == pytest.approx(1.2)


def test_the_department_variable_keeps_its_departments_wallets(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows_written = credit_store
    chosen = _rows(store, "Credits this year (ledger approximation)", ["研发部", "o'brien"])
    assert [row[:3] for row in chosen] == [("dept-credits/研发部", "dept-credits", "研发部")]
    assert [row[-1] for row in _rows(store, "Pending top-up requests", ["销售部"])] == ["r-pending-2"]


def test_the_projection_is_the_enforcers(credit_store: tuple[Any, CreditRows]) -> None:
    store, rows = credit_store
    shown = {row[0]: row[1:] for row in _rows(store, "When the credits run out")}
    expected = {}
    for account in ACCOUNTS:
        _entries, balance, _year, ahead = _core(store, rows, account)
        rate = ahead.daily_rate.quantize(Decimal("1e-9"), rounding=ROUND_DOWN)  # SQL keeps 9 places, truncated
        expected[account] = (balance.available, rate, ahead.days_left, ahead.runs_out_on)
    assert shown == expected
    assert shown["dept-credits/销售部"][1:] == (Decimal(900), 2, rows.today + timedelta(days=2))
    assert shown["dept-credits/客服部"][2:] == (0, rows.today)
    assert shown["org-credits"][2:] == (None, None)  # no charge in the 30 days before today


def test_burn_down_is_the_cumulative_charges_against_the_credits(credit_store: tuple[Any, CreditRows]) -> None:
    store, rows = credit_store
    now = datetime.now(UTC)
    shown = {(_utc(time), series): amount for time, series, amount in _rows(store, "Burn-down this year")}
    expected = {}
    for account in ACCOUNTS:
        entries = wallet_entries(store, account)
        charges = [e for e in entries if e.kind == "charge" and rows.year[0] <= e.at <= now]
        credits = [e for e in entries if (e.adds and e.at <= now < e.valid_until)  # type: ignore[operator]
                   or (e.kind == "adjustment" and e.amount < 0 and rows.year[0] <= e.at <= now)]  # fmt: skip
        for moment in {charge.at for charge in charges}:
            expected[(moment, f"{account} used")] = sum((c.amount for c in charges if c.at <= moment), ZERO)
            expected[(moment, f"{account} credits")] = sum((c.amount for c in credits if c.at <= moment), ZERO)
    assert shown == expected
    last_day = max(moment for moment, series in shown if series == "dept-credits/销售部 used")
    assert shown[(last_day, "dept-credits/销售部 used")] == Decimal(18000)


def test_daily_charges_are_the_ledgers_per_day(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows_written = credit_store
    since = datetime.now(UTC) - timedelta(days=10)
    shown = {(_utc(time), account): charged for time, account, charged in _rows(store, "Daily charges", days=10)}
    expected: dict[tuple[datetime, str], Decimal] = {}
    for account in ACCOUNTS:
        for entry in wallet_entries(store, account):
            if entry.kind == "charge" and entry.at >= since:
                expected[(entry.at, account)] = expected.get((entry.at, account), ZERO) + entry.amount
    assert shown == expected
    yesterday = max(moment for moment, account in shown if account == "dept-credits/研发部")
    assert shown[(yesterday, "dept-credits/研发部")] % 1 == Decimal("0.623456789")  # the late charge added in


def test_pending_requests_are_those_the_fold_finds_pending(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows_written = credit_store
    now = datetime.now(UTC)
    shown = {row[-1]: (row[0], row[1], row[2], _utc(row[3]), _utc(row[4]), row[5], row[6])
             for row in _rows(store, "Pending top-up requests")}  # fmt: skip
    expected = {}
    for request_id, events in events_by_request(store).items():
        state = fold(events, RULES, now)
        if state.status == "pending":
            request = state.request
            expected[request_id] = (request.account, request.amount, request.requester, request.created_at,
                                    request.expires_at, len(state.approvals),
                                    ", ".join(sorted(given.by for given in state.approvals)))  # fmt: skip
    assert shown == expected
    assert set(shown) == {"r-pending-1", "r-pending-2"} and shown["r-pending-1"][5:] == (1, "dora")


def test_recent_top_ups_name_their_approver_and_requester(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows_written = credit_store
    shown = {row[-1]: (row[1], row[2], row[3], row[4]) for row in _rows(store, "Recent top-ups", days=1)}
    assert shown == {
        "top_up:r-approved": ("dept-credits/研发部", Decimal(3000), "dora", "carol"),
        "top_up:r-approved-long-ago": ("dept-credits/研发部", Decimal(1000), "dora", "carol"),
    }
    entries = {e.entry_id: e for e in wallet_entries(store, "dept-credits/研发部") if e.kind == "top_up"}
    assert {entry_id: (e.amount, e.actor) for entry_id, e in entries.items()} == {
        entry_id: (amount, approver) for entry_id, (_account, amount, approver, _requester) in shown.items()
    }
