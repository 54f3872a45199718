"""The days a reconciliation compares, in the provider's time zone: ``--month``, ``--from``/``--to``, or by
default the whole calendar months the imported export touches (so days the provider billed nothing on, at the
month's start or end, are compared too)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

_MONTH: Final = re.compile(r"^(\d{4})-(\d{2})$")
_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ReconcilePeriod:
    first: date
    last: date  # inclusive
    zone: str

    @property
    def months(self) -> tuple[str, ...]:
        """``2026-11`` for each month the days touch, in order."""
        found, day = [], self.first.replace(day=1)
        while day <= self.last:
            found.append(f"{day:%Y-%m}")
            day = (day + timedelta(days=32)).replace(day=1)
        return tuple(found)

    @property
    def label(self) -> str:
        return f"{self.first.isoformat()} .. {self.last.isoformat()} ({self.zone})"

    def utc_bounds(self) -> tuple[datetime, datetime]:
        """[start, end) of the days in UTC, for tokenmeter's calls."""
        zone = ZoneInfo(self.zone)
        start = datetime.combine(self.first, datetime.min.time(), zone).astimezone(UTC)
        end = datetime.combine(self.last + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
        return start, end

    @classmethod
    def parse(
        cls,
        zone: str,
        month: str | None = None,
        first: str | None = None,
        last: str | None = None,
        covered: tuple[date, date] | None = None,
    ) -> ReconcilePeriod:
        """From the options, else the months of ``covered`` (the export's first and last day); ValueError naming
        the option."""
        if month is not None:
            if first is not None or last is not None:
                raise ValueError("month: give --month or --from/--to, not both")
            return cls(*_month_days(month), zone)
        if first is not None or last is not None:
            if first is None or last is None:
                raise ValueError("from: --from and --to go together")
            start, end = _day(first, "from"), _day(last, "to")
            if end < start:
                raise ValueError(f"to: {last} is before --from {first}")
            return cls(start, end, zone)
        if covered is None:
            raise ValueError("month: nothing imported to take the period from; give --month YYYY-MM or --from/--to")
        return cls(covered[0].replace(day=1), _month_days(f"{covered[1]:%Y-%m}")[1], zone)


def _month_days(text: str) -> tuple[date, date]:
    match = _MONTH.match(text)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"month: {text!r} is not a month; use YYYY-MM, e.g. 2026-11")
    first = date(int(match.group(1)), int(match.group(2)), 1)
    return first, (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)


def _day(text: str, option: str) -> date:
    try:
        if not _DAY.match(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a day; use YYYY-MM-DD") from None
