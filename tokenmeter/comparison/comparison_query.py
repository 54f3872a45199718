"""What a comparison is asked for, from the command line's options or ``GET /v1/compare``'s parameters.

Both spell it the same way (``period``, ``timezone``, ``app``, ``models=a,b``, ``experiment``,
``min_ratings``, ``margin``), so `tokenmeter compare` hands its options to serve unchanged. A bad value is
a ValueError naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenmeter.comparison.answer_rows import AnswerRow
from tokenmeter.comparison.model_comparison import Comparison, ComparisonFilters
from tokenmeter.comparison.pair_findings import MARGIN, MIN_RATINGS
from tokenmeter.comparison.periods import ComparisonPeriod


@dataclass(frozen=True)
class ComparisonQuery:
    period: ComparisonPeriod
    filters: ComparisonFilters = field(default_factory=ComparisonFilters)
    min_ratings: int = MIN_RATINGS
    margin: float = MARGIN

    @classmethod
    def parse(cls, *, period: str | None = None, timezone: str | None = None, app: str | None = None,
              models: str | None = None, experiment: str | None = None, min_ratings: str | int | None = None,
              margin: str | float | None = None) -> ComparisonQuery:  # fmt: skip
        """From texts as typed (None or empty: the default); ValueError naming the first bad one."""
        names = tuple(dict.fromkeys(name.strip() for name in (models or "").split(",") if name.strip()))
        return cls(
            period=ComparisonPeriod.parse(period or None, timezone or "UTC"),
            filters=ComparisonFilters(app or None, names, experiment or None),
            min_ratings=_min_ratings(min_ratings),
            margin=_margin(margin),
        )

    def comparison(self, rows: Sequence[AnswerRow]) -> Comparison:
        return Comparison(self.period, tuple(rows), self.filters, self.min_ratings, self.margin)

    def parameters(self) -> dict[str, str]:
        """As ``GET /v1/compare``'s query parameters (what :meth:`parse` reads back)."""
        found = {"period": self.period.label, "timezone": self.period.timezone, "app": self.filters.app or "",
                 "models": ",".join(self.filters.models), "experiment": self.filters.experiment or "",
                 "min_ratings": str(self.min_ratings), "margin": repr(self.margin)}  # fmt: skip
        return {name: value for name, value in found.items() if value}


def _min_ratings(value: str | int | None) -> int:
    if value is None or value == "":
        return MIN_RATINGS
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 2:
        raise ValueError(f"min_ratings: {value!r} is not a whole number of at least 2 (an interval needs two ratings)")
    return number


def _margin(value: str | float | None) -> float:
    if value is None or value == "":
        return MARGIN
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"margin: {value!r} is not a positive number of rating points (0 to 100 scale)")
    return number
