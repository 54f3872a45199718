"""The period a comparison covers: a day, ISO week, month or year, written as `tokenmeter report` labels them.

``2026-11`` (a month), ``2026-11-03`` (a day), ``2026-W45`` (an ISO week), ``2026`` (a year); from local
midnight to local midnight in a time zone (UTC unless one is named), by :mod:`tokenmeter.calendar_periods`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenmeter.calendar_periods import calendar_period, midnight

_FORMS: Final = (
    ("month", re.compile(r"(\d{4})-(\d{2})")),
    ("day", re.compile(r"(\d{4})-(\d{2})-(\d{2})")),
    ("week", re.compile(r"(\d{4})-W(\d{2})")),
    ("year", re.compile(r"(\d{4})")),
)
PERIOD_HELP: Final = "a month 2026-11, a day 2026-11-03, an ISO week 2026-W45 or a year 2026"


@dataclass(frozen=True)
class ComparisonPeriod:
    """``[start, end)`` between local midnights in ``timezone``; ``label`` as given (normalised)."""

    kind: str
    label: str
    start: datetime
    end: datetime
    timezone: str

    @classmethod
    def parse(cls, text: str | None, timezone: str = "UTC", today: date | None = None) -> ComparisonPeriod:
        """``text`` in one of the four forms (None or empty: this month, in ``timezone``)."""
        zone = time_zone(timezone)
        if not text:
            day = today or datetime.now(UTC).astimezone(zone).date()
            text = f"{day.year:04d}-{day.month:02d}"
        kind, first_day = _first_day(text.strip())
        first, after = calendar_period(kind, first_day)
        return cls(kind, text.strip(), midnight(first, zone), midnight(after, zone), timezone)


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (e.g. Asia/Shanghai); ValueError naming it when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        message = f"timezone: {name!r} is not a time zone; use an IANA name such as Asia/Shanghai or UTC"
        raise ValueError(message) from None


def _first_day(text: str) -> tuple[str, date]:
    for kind, form in _FORMS:
        match = form.fullmatch(text)
        if match is None:
            continue
        numbers = [int(part) for part in match.groups()]
        try:
            if kind == "week":
                return kind, date.fromisocalendar(numbers[0], numbers[1], 1)
            year, month, day = [*numbers, 1, 1][:3]
            return kind, date(year, month, day)
        except ValueError:
            break
    raise ValueError(f"period: {text!r} is not a period; use {PERIOD_HELP}")
