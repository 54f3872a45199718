"""Calendar periods: the day, ISO week (Monday first), month or year that holds a date.

Shared by reports (UTC) and quota budgets (the policy's time zone): both turn the dates
into midnights of their own zone.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Final

PERIODS: Final[tuple[str, ...]] = ("day", "week", "month", "year")


def calendar_period(period: str, day: date) -> tuple[date, date]:
    """``[first, last)``: the first day of the period holding ``day`` and the first day after it."""
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        first = day - timedelta(days=day.weekday())
        return first, first + timedelta(days=7)
    if period == "month":
        first = day.replace(day=1)
        return first, (first + timedelta(days=32)).replace(day=1)
    if period == "year":
        return day.replace(month=1, day=1), day.replace(year=day.year + 1, month=1, day=1)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")


def midnight(day: date, zone: tzinfo) -> datetime:
    """00:00 of ``day`` in ``zone``, as an aware datetime in that zone."""
    return datetime(day.year, day.month, day.day, tzinfo=zone)
