"""The comparison's JSON document: what `tokenmeter compare --format json` prints and ``GET /v1/compare`` answers.

Amounts are decimal strings (never JSON numbers, which would pass through float). Each row keeps the sums
it was made from (answers, ratings' sum and sum of squares, tokens, costs), so the document can be read
back into the same comparison; the derived columns and the findings are there for readers of the JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenmeter.comparison.answer_rows import AnswerRow, CostTotal, ModelFigures, PricedCost
from tokenmeter.comparison.statistics import CONFIDENCE, Interval

if TYPE_CHECKING:
    from tokenmeter.comparison.model_comparison import Comparison
    from tokenmeter.comparison.pair_findings import PairFinding


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    period, filters = comparison.period, comparison.filters
    return {
        "period": {
            "label": period.label,
            "kind": period.kind,
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "timezone": period.timezone,
        },
        "filters": {"app": filters.app, "models": list(filters.models), "experiment": filters.experiment},
        "min_ratings": comparison.min_ratings,
        "margin": comparison.margin,
        "confidence": CONFIDENCE,
        "rows": [_row_document(figures) for figures in comparison.figures],
        "findings": [_finding_document(finding) for finding in comparison.findings],
    }


def _costs(costs: tuple[CostTotal, ...] | tuple[PricedCost, ...]) -> list[dict[str, Any]]:
    return [cost.to_dict() for cost in costs]


def _interval(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high, "df": interval.df}


def _row_document(figures: ModelFigures) -> dict[str, Any]:
    row = figures.row
    return {
        "app": row.app, "model": row.model, "experiment": row.experiment, "arm": row.arm,
        "answers": row.answers, "rated_answers": row.rated_answers, "calls": row.calls,
        "mean_rating": figures.mean_rating, "rating_interval": _interval(figures.rating_interval),
        "rating_sum": row.rating_sum, "rating_sum_of_squares": row.rating_sum_of_squares,
        "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
        "input_tokens_per_answer": figures.input_tokens_per_answer,
        "output_tokens_per_answer": figures.output_tokens_per_answer,
        "unpriced_answers": row.unpriced_answers,
        "costs": _costs(row.costs), "cost_per_answer": _costs(figures.cost_per_answer),
        "cost_per_rating_point": _costs(figures.cost_per_rating_point),
    }  # fmt: skip


def _finding_document(finding: PairFinding) -> dict[str, Any]:
    first, second = finding.first.row, finding.second.row
    saving = finding.cost.saving
    return {
        "app": finding.app, "experiment": first.experiment,
        "from": {"model": first.model, "arm": first.arm, "rated_answers": first.rated_answers},
        "to": {"model": second.model, "arm": second.arm, "rated_answers": second.rated_answers},
        "cost": finding.cost.direction, "saving": saving.to_dict() if saving is not None else None,
        "price_kind": finding.cost.price_kind, "cost_unknown_reason": finding.cost.reason,
        "rating_difference": _interval(finding.rating_difference),
        "quality": finding.quality, "sentence": finding.sentence,
    }  # fmt: skip


def rows_from_document(rows: list[dict[str, Any]]) -> tuple[AnswerRow, ...]:
    """The :class:`AnswerRow` s of a document's ``rows`` (KeyError, TypeError, ValueError when malformed)."""
    return tuple(
        AnswerRow(
            app=str(row["app"]),
            model=str(row["model"]),
            experiment=str(row["experiment"]),
            arm=str(row["arm"]),
            answers=int(row["answers"]),
            rated_answers=int(row["rated_answers"]),
            calls=int(row["calls"]),
            rating_sum=float(row["rating_sum"]),
            rating_sum_of_squares=float(row["rating_sum_of_squares"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            unpriced_answers=int(row["unpriced_answers"]),
            costs=tuple(PricedCost.from_dict(cost) for cost in row["costs"]),
        )
        for row in rows
    )
