"""What an export becomes: rows of ``provider_usage``, one per day, model, workspace, API key and token type.

Values are exact: token counts and money are Decimal from the export's text (a JSON number is read as its
text, never through a float). An export's rows for one key are added up (hourly buckets, several users under
one key); the file's own rows replace what an earlier import held for the same keys (see
:mod:`tokenmeter.store.reconcile_queries`). A value that cannot be read is an :class:`ExportError` naming the
file, the line (or JSON element) and the column; nothing of the file is written then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from tokenmeter.errors import TokenmeterError

# Money and counts are kept to 12 decimal places, as tokenmeter's costs are (Decimal(38, 12)).
PLACES: Final = Decimal("0.000000000001")
_DAY_TEXT: Final = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[ T].*)?$")


class ExportError(TokenmeterError, ValueError):
    """An export cannot be read; the message names the file, the line or element, and the column."""


@dataclass(frozen=True)
class Where:
    """Where a value is: ``file``, ``line`` (``line 7`` or ``data[2].results[0]``) and the column or key."""

    file: str
    line: str
    column: str = ""

    def error(self, problem: str) -> ExportError:
        column = f", column {self.column!r}" if self.column else ""
        return ExportError(f"{self.file}, {self.line}{column}: {problem}")

    def at(self, column: str) -> Where:
        return Where(self.file, self.line, column)


@dataclass(frozen=True, order=True)
class RowKey:
    day: date
    model: str
    workspace: str
    api_key: str
    token_type: str


@dataclass(frozen=True)
class ProviderRow:
    """One value of ``provider_usage``: ``quantity`` of ``token_type`` (money in ``currency`` for ``cost``)."""

    key: RowKey
    model_key: str
    quantity: Decimal
    currency: str = ""


@dataclass
class ImportedExport:
    """A provider's export, read: its rows (one per key), the rows left out and why, and the files it came from."""

    provider: str
    zone: str
    rows: list[ProviderRow]
    files: tuple[str, ...]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def days(self) -> tuple[date, date] | None:
        """The first and last day the rows cover."""
        days = [row.key.day for row in self.rows]
        return (min(days), max(days)) if days else None


def sum_rows(rows: Iterable[ProviderRow], where: str) -> list[ProviderRow]:
    """One row per key, the quantities added; a key with two currencies is an error (its cost cannot be added)."""
    summed: dict[RowKey, ProviderRow] = {}
    for row in rows:
        earlier = summed.get(row.key)
        if earlier is None:
            summed[row.key] = row
            continue
        if earlier.currency != row.currency:
            raise ExportError(
                f"{where}: {row.key.model} on {row.key.day} is billed in {earlier.currency} and "
                f"{row.currency}; import one currency at a time"
            )
        summed[row.key] = ProviderRow(row.key, row.model_key, earlier.quantity + row.quantity, row.currency)
    return [summed[key] for key in sorted(summed)]


def decimal_value(raw: object, where: Where, *, empty_is_zero: bool = True) -> Decimal:
    """A number from an export's text or JSON value (JSON numbers arrive as Decimal); finite and not negative."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if empty_is_zero:
            return Decimal(0)
        raise where.error("no value")
    if isinstance(raw, bool) or not isinstance(raw, (str, int, Decimal)):
        raise where.error(f"{raw!r} is not a number")
    try:
        value = Decimal(raw.strip().replace(",", "")) if isinstance(raw, str) else Decimal(raw)
    except InvalidOperation:
        raise where.error(f"{raw!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise where.error(f"{raw!r} is not a finite, non-negative number")
    exponent = value.as_tuple().exponent
    return value.quantize(PLACES).normalize() if isinstance(exponent, int) and exponent < -12 else value


def day_value(raw: object, where: Where) -> date:
    """A day from ``2026-11-05``, ``2026/11/5`` or ``2026-11-05 00:00:00`` (the date part)."""
    match = _DAY_TEXT.match(str(raw).strip()) if isinstance(raw, str) else None
    try:
        if match is None:
            raise ValueError
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise where.error(f"{raw!r} is not a date (YYYY-MM-DD)") from None


def unix_day_value(raw: object, where: Where) -> date:
    """The UTC day of a Unix time in seconds (a bucket's start)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)) or raw != int(raw) or raw < 0:
        raise where.error(f"{raw!r} is not a Unix time in seconds")
    return datetime.fromtimestamp(int(raw), UTC).date()
