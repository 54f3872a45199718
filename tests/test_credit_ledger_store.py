"""The credits ledger in a real store (chDB): entries recorded once, read back exactly, conflicts refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from tokenmeter.credits.burn_down import wallet_balance
from tokenmeter.credits.ledger import LedgerEntry, LedgerError
from tokenmeter.store.credit_ledger import record_entry, wallet_entries

SHANGHAI = timezone(timedelta(hours=8))
WALLET = "department:研发部"
YEAR = (datetime(2026, 1, 1, tzinfo=SHANGHAI), datetime(2027, 1, 1, tzinfo=SHANGHAI))
GRANT = LedgerEntry("policy:研发部:2026", WALLET, "grant", Decimal("100000"), YEAR[0], "policy",
                    "yearly allowance", valid_until=YEAR[1])  # fmt: skip
TOP_UP = LedgerEntry("request-7", WALLET, "top_up", Decimal("2500.125"),
                     datetime(2026, 11, 3, 9, 30, 0, 123456, SHANGHAI), "张伟 (approver)",
                     "quarter-end reports; it's \"urgent\"", valid_until=YEAR[1], priority=-1)  # fmt: skip
CHARGE = LedgerEntry("charge:2026-11-02", WALLET, "charge", Decimal("0.000000001"), datetime(2026, 11, 3, tzinfo=UTC),
                     "enforcer", "usage of 2026-11-02")  # fmt: skip


def test_entries_read_back_exactly_as_they_were_recorded(migrated_store: Any) -> None:
    for entry in (GRANT, TOP_UP, CHARGE):
        assert record_entry(migrated_store, entry) is True
    assert wallet_entries(migrated_store, WALLET) == [GRANT, CHARGE, TOP_UP]  # in time order; quotes kept as text
    assert wallet_entries(migrated_store, "department:销售部") == []
    balance = wallet_balance(WALLET, wallet_entries(migrated_store, WALLET), datetime(2026, 12, 1, tzinfo=UTC))
    assert balance.available == Decimal("102500.124999999")


def test_an_entry_sent_twice_is_written_once(migrated_store: Any) -> None:
    assert record_entry(migrated_store, TOP_UP) is True
    # The same entry again, its times given in another zone: the same instant, the same entry.
    again = replace(TOP_UP, at=TOP_UP.at.astimezone(UTC), amount=Decimal("2500.1250"))
    assert record_entry(migrated_store, again) is False
    count = migrated_store.query("SELECT count() FROM credit_ledger").result_rows[0][0]
    assert count == 1


def test_an_id_recorded_with_other_content_is_refused_and_the_first_kept(migrated_store: Any) -> None:
    record_entry(migrated_store, TOP_UP)
    with pytest.raises(LedgerError, match="'request-7' was recorded before with other content"):
        record_entry(migrated_store, replace(TOP_UP, amount=Decimal(5000)))
    assert wallet_entries(migrated_store, WALLET) == [TOP_UP]


def test_rows_that_disagree_on_an_id_make_reading_fail_loudly(migrated_store: Any) -> None:
    """Two writers racing on one id can both write; the reader refuses rather than pick one."""
    record_entry(migrated_store, TOP_UP)
    migrated_store.command(
        "INSERT INTO credit_ledger SELECT * REPLACE (amount + 1 AS amount) FROM credit_ledger "
        "WHERE entry_id = 'request-7'"
    )
    with pytest.raises(LedgerError, match="recorded before with other content"):
        wallet_entries(migrated_store, WALLET)


def test_amounts_finer_than_the_store_keeps_are_refused_not_rounded(migrated_store: Any) -> None:
    with pytest.raises(LedgerError, match="keeps 9 decimal places"):
        record_entry(migrated_store, replace(CHARGE, amount=Decimal("0.0000000001")))
    with pytest.raises(LedgerError, match="must be above 0"):
        record_entry(migrated_store, replace(CHARGE, amount=Decimal("-1")))
    assert wallet_entries(migrated_store, WALLET) == []
