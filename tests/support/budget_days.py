"""Daily budgets in tests that run for minutes: a timezone whose next midnight is hours away.

A budget day that ends while a test is calling splits its usage over two periods, and a
budget it meant to exhaust is fresh again. Of two zones whose midnights are 8 hours apart,
the one with the later next midnight is at least 8 hours from its day's end.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

ZONES = ("Asia/Shanghai", "UTC")  # midnight at 16:00 and 00:00 UTC


def hours_to_midnight(zone: str, now: datetime) -> float:
    local = now.astimezone(ZoneInfo(zone))
    return 24 - (local.hour + local.minute / 60 + local.second / 3600)


def timezone_far_from_midnight(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return max(ZONES, key=lambda zone: hours_to_midnight(zone, moment))
