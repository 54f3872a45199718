"""The comparison of one period: the per (app, model[, arm]) table and the pair findings, and its JSON document.

Which pairs: within each app, with ``--models a,b,...`` the first of them present -> each other one; with an
experiment, each control row -> each candidate row; otherwise every two models, from the one with more
answers (what the app mostly runs) to the other. The document (``tokenmeter compare --format json``,
``GET /v1/compare``) holds the rows' sums, so :meth:`Comparison.from_dict` rebuilds the same comparison
(serve answers, the command line prints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from typing import Any

from tokenmeter.comparison.answer_rows import AnswerRow, ModelFigures
from tokenmeter.comparison.comparison_document import comparison_document, rows_from_document
from tokenmeter.comparison.pair_findings import MARGIN, MIN_RATINGS, PairFinding, pair_finding
from tokenmeter.comparison.periods import ComparisonPeriod
from tokenmeter.semconv import ARM_CANDIDATE, ARM_CONTROL


@dataclass(frozen=True)
class ComparisonFilters:
    """What the comparison was asked for: one app, some models (in the order given), one experiment."""

    app: str | None = None
    models: tuple[str, ...] = ()
    experiment: str | None = None


@dataclass(frozen=True)
class Comparison:
    period: ComparisonPeriod
    rows: tuple[AnswerRow, ...]
    filters: ComparisonFilters = field(default_factory=ComparisonFilters)
    min_ratings: int = MIN_RATINGS
    margin: float = MARGIN

    def __post_init__(self) -> None:
        if self.min_ratings < 2:
            raise ValueError(f"min_ratings must be at least 2 (an interval needs two ratings), got {self.min_ratings}")
        if not self.margin > 0:
            raise ValueError(f"margin must be a positive number of rating points, got {self.margin}")

    @cached_property
    def figures(self) -> tuple[ModelFigures, ...]:
        """One per row: by app, control arm before candidate, most answers first, then by model."""
        arm_order = {ARM_CONTROL: 0, ARM_CANDIDATE: 1}
        ordered = sorted(self.rows, key=lambda r: (r.app, r.experiment, arm_order.get(r.arm, 2), r.arm, -r.answers,
                                                   r.model))  # fmt: skip
        return tuple(ModelFigures(row) for row in ordered)

    @cached_property
    def findings(self) -> tuple[PairFinding, ...]:
        return tuple(
            pair_finding(first, second, self.period.label, min_ratings=self.min_ratings, margin=self.margin)
            for first, second in _pairs(self.figures, self.filters)
        )

    def to_dict(self) -> dict[str, Any]:
        return comparison_document(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Comparison:
        """The inverse of :meth:`to_dict`; ValueError when ``document`` is not a comparison."""
        try:
            period = document["period"]
            filters = document["filters"]
            return cls(
                period=ComparisonPeriod.parse(str(period["label"]), str(period["timezone"])),
                rows=rows_from_document(document["rows"]),
                filters=ComparisonFilters(
                    filters.get("app"), tuple(filters.get("models") or ()), filters.get("experiment")
                ),
                min_ratings=int(document["min_ratings"]),
                margin=float(document["margin"]),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ValueError(f"not a comparison document ({type(exc).__name__}: {exc})") from None


def _pairs(figures: Sequence[ModelFigures], filters: ComparisonFilters) -> list[tuple[ModelFigures, ModelFigures]]:
    by_app: dict[str, list[ModelFigures]] = {}
    for figure in figures:
        by_app.setdefault(figure.row.app, []).append(figure)
    pairs: list[tuple[ModelFigures, ModelFigures]] = []
    for group in by_app.values():
        if filters.experiment:
            controls = [f for f in group if f.row.arm == ARM_CONTROL]
            pairs += [(c, d) for c in controls for d in group if d.row.arm == ARM_CANDIDATE]
        elif filters.models:
            present = sorted(group, key=lambda f: filters.models.index(f.row.model) if f.row.model in filters.models
                             else len(filters.models))  # fmt: skip
            pairs += [(present[0], other) for other in present[1:]]
        else:
            ranked = sorted(group, key=lambda f: (-f.row.answers, f.row.model))
            pairs += list(combinations(ranked, 2))
    return pairs
