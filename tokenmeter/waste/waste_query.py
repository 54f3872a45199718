"""What a waste report is asked for, from the command line's options or ``GET /v1/waste``'s parameters.

Both spell it the same way (``period``, ``timezone``, ``cache_ttl``, ``retry_window``, ``top``, ``heavy_factor``,
``heavy_min_calls``), so `tokenmeter report --waste` hands its options to serve unchanged. A bad value is a
ValueError naming the option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from tokenmeter.comparison.periods import ComparisonPeriod

CACHE_TTL_SECONDS: Final = 3600  # the repeat-answer cache's default TTL (TOKENMETER_ANSWER_CACHE_TTL)
RETRY_WINDOW_SECONDS: Final = 120
TOP: Final = 20
HEAVY_FACTOR: Final = 3.0
HEAVY_MIN_CALLS: Final = 5
PARAMETERS: Final = ("period", "timezone", "cache_ttl", "retry_window", "top", "heavy_factor", "heavy_min_calls")


@dataclass(frozen=True)
class WasteQuery:
    period: ComparisonPeriod
    cache_ttl: int = CACHE_TTL_SECONDS
    retry_window: int = RETRY_WINDOW_SECONDS
    top: int = TOP  # rows per finding
    heavy_factor: float = HEAVY_FACTOR
    heavy_min_calls: int = HEAVY_MIN_CALLS

    @classmethod
    def parse(
        cls,
        *,
        period: str | None = None,
        timezone: str | None = None,
        cache_ttl: str | int | None = None,
        retry_window: str | int | None = None,
        top: str | int | None = None,
        heavy_factor: str | float | None = None,
        heavy_min_calls: str | int | None = None,
    ) -> WasteQuery:
        """From texts as typed (None or empty: the default); ValueError naming the first bad one."""
        return cls(
            period=ComparisonPeriod.parse(period or None, timezone or "UTC"),
            cache_ttl=_whole("cache_ttl", cache_ttl, CACHE_TTL_SECONDS, "seconds", 1),
            retry_window=_whole("retry_window", retry_window, RETRY_WINDOW_SECONDS, "seconds", 1),
            top=_whole("top", top, TOP, "rows", 1),
            heavy_factor=_factor(heavy_factor),
            heavy_min_calls=_whole("heavy_min_calls", heavy_min_calls, HEAVY_MIN_CALLS, "calls", 1),
        )

    def parameters(self) -> dict[str, str]:
        """As ``GET /v1/waste``'s query parameters (what :meth:`parse` reads back)."""
        return {"period": self.period.label, "timezone": self.period.timezone, "cache_ttl": str(self.cache_ttl),
                "retry_window": str(self.retry_window), "top": str(self.top), "heavy_factor": repr(self.heavy_factor),
                "heavy_min_calls": str(self.heavy_min_calls)}  # fmt: skip


def _whole(name: str, value: str | int | None, default: int, unit: str, least: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least or number > 10**9:
        raise ValueError(f"{name}: {value!r} is not a whole number of {unit} from {least} up")
    return number


def _factor(value: str | float | None) -> float:
    if value is None or value == "":
        return HEAVY_FACTOR
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 1):
        raise ValueError(f"heavy_factor: {value!r} is not a number above 1 (times the department's input per call)")
    return number
