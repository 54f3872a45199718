"""The credits ledger in the store (``credit_ledger``): record an entry once, read a wallet's entries.

Append-only: nothing here updates or deletes a row. Recording checks the id first, so an entry
sent twice (a retried request, an approval clicked twice) is written once and the second call
says so; the same id with other content is refused. Two writers racing on one id can both
write: readers keep one row per id and refuse an id whose rows differ
(:func:`tokenmeter.credits.ledger.recorded_once`), so a conflict is loud, never resolved silently.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.credits.ledger import LedgerEntry, LedgerError, check_entry, recorded_once

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

TABLE: Final = "credit_ledger"
_ENTRY_COLUMNS: Final = ("wallet", "entry_id", "kind", "amount", "at", "valid_until", "priority", "rolls_over",
                         "actor", "reason")  # fmt: skip
_SELECT: Final = f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM {TABLE} WHERE wallet = {{wallet:String}}"  # noqa: S608 - constants
_PLACES: Final = 9  # amount is Decimal(38, 9)
# One writer at a time in this process: a check-then-insert is not atomic in ClickHouse.
_WRITE_LOCK = threading.Lock()


def record_entry(client: Client, entry: LedgerEntry, now: datetime | None = None) -> bool:
    """Write ``entry`` unless it is there already: True if written, False if it was recorded before.

    Raises LedgerError for a bad entry, or an id recorded before with other content.
    """
    check_entry(entry)
    if -entry.amount.as_tuple().exponent > _PLACES:  # type: ignore[operator]
        raise LedgerError(f"ledger entry {entry.entry_id!r}: the store keeps {_PLACES} decimal places, "
                          f"{entry.amount} has more")  # fmt: skip
    with _WRITE_LOCK:
        before = _rows(client, entry.wallet, "entry_id = {entry_id:String}", {"entry_id": entry.entry_id})
        if before:
            recorded_once([*before, entry])  # raises if the content differs
            return False
        row = [*_row(entry), (now or datetime.now(UTC)).astimezone(UTC)]
        client.insert(TABLE, [row], column_names=[*_ENTRY_COLUMNS, "recorded_at"])
    return True


def wallet_entries(client: Client, wallet: str) -> list[LedgerEntry]:
    """Every entry of ``wallet``, each id once (LedgerError if an id was recorded twice differently)."""
    return recorded_once(_rows(client, wallet, "1", {}))


def accounts_entries(client: Client, wallet: str, recorded_since: datetime | None = None
                     ) -> list[tuple[LedgerEntry, datetime]]:  # fmt: skip
    """The entries of every account of the policy wallet ``wallet`` (``wallet`` and ``wallet/...``), with
    when each was recorded; only those recorded at or after ``recorded_since`` when given. Not checked
    for repeats: the caller keeps them by id (:func:`tokenmeter.credits.ledger.recorded_once`)."""
    sql = (f"SELECT {', '.join(_ENTRY_COLUMNS)}, recorded_at FROM {TABLE} "  # noqa: S608 - constants
           "WHERE (wallet = {wallet:String} OR startsWith(wallet, {prefix:String})) "
           "AND recorded_at >= {since:DateTime64(6, 'UTC')} ORDER BY recorded_at, entry_id")  # fmt: skip
    since = (recorded_since or datetime(1970, 1, 1, tzinfo=UTC)).astimezone(UTC).replace(tzinfo=None)
    rows = client.query(sql, parameters={"wallet": wallet, "prefix": f"{wallet}/", "since": since}).result_rows
    return [(_entry(row[:-1]), _utc(row[-1])) for row in rows]


def _rows(client: Client, wallet: str, condition: str, parameters: dict[str, Any]) -> list[LedgerEntry]:
    sql = f"{_SELECT} AND {condition} ORDER BY at, entry_id"
    rows = client.query(sql, parameters={"wallet": wallet, **parameters}).result_rows
    return [_entry(row) for row in rows]


def _row(entry: LedgerEntry) -> list[object]:
    valid_until = entry.valid_until.astimezone(UTC) if entry.valid_until is not None else None
    return [entry.wallet, entry.entry_id, entry.kind, entry.amount, entry.at.astimezone(UTC), valid_until,
            entry.priority, entry.rolls_over, entry.actor, entry.reason]  # fmt: skip


def _entry(row: tuple[Any, ...] | list[Any]) -> LedgerEntry:
    wallet, entry_id, kind, amount, at, valid_until, priority, rolls_over, actor, reason = row
    return LedgerEntry(
        entry_id=str(entry_id), wallet=str(wallet), kind=kind, amount=Decimal(amount),
        at=_utc(at), actor=str(actor), reason=str(reason),
        valid_until=_utc(valid_until) if valid_until is not None else None,
        priority=int(priority), rolls_over=bool(rolls_over),
    )  # fmt: skip


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
