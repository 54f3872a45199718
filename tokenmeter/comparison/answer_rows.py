"""One (app, model[, experiment arm]) row: its answers, their ratings, tokens and cost, and what they say.

The store returns :class:`AnswerRow` s (:mod:`tokenmeter.store.rating_queries`, which holds the rules: what
an answer is, which rating is its rating); :class:`ModelFigures` derives the table's columns from one.
Money stays Decimal: cost per answer, per price (currency, real or virtual), is the cost of the calls priced
so divided by the answers with such calls; an unpriced call never counts as 0 (its answers are counted apart).
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, Final

from tokenmeter.comparison.statistics import Interval, SampleSummary, mean_interval

# Quotients (cost per answer) are kept to 12 places, the store's scale for costs.
MONEY_PLACES: Final = Decimal("1e-12")
_DIVISION: Final = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)


def divide_money(amount: Decimal, divisor: Decimal | int | float) -> Decimal:
    """``amount / divisor`` to 12 decimal places (half to even); ``divisor`` must not be 0."""
    with decimal.localcontext(_DIVISION):
        quotient = amount / (divisor if isinstance(divisor, Decimal) else Decimal(str(divisor)))
        return quotient.quantize(MONEY_PLACES)


def decimal_text(amount: Decimal) -> str:
    """Plain digits without trailing zeros, never an exponent: ``0.0135``, ``7``, ``0.0000006``."""
    return format(amount.normalize(), "f") if amount else "0"


@dataclass(frozen=True)
class CostTotal:
    """A sum of money in one currency; ``virtual``: an internal price (a local model), not an invoice amount."""

    currency: str
    virtual: bool
    amount: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {"currency": self.currency, "virtual": self.virtual, "amount": decimal_text(self.amount)}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> CostTotal:
        if not isinstance(document["amount"], str):  # a JSON number would have passed through float
            raise TypeError(f"amount must be a decimal string, got {document['amount']!r}")
        return cls(str(document["currency"]), bool(document["virtual"]), Decimal(document["amount"]))


@dataclass(frozen=True)
class PricedCost:
    """A row's cost at one price (currency, real or virtual): of its calls priced so, and the answers with them."""

    currency: str
    virtual: bool
    amount: Decimal
    answers: int

    def to_dict(self) -> dict[str, Any]:
        return {**CostTotal(self.currency, self.virtual, self.amount).to_dict(), "answers": self.answers}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> PricedCost:
        total = CostTotal.from_dict(document)
        return cls(total.currency, total.virtual, total.amount, int(document["answers"]))


@dataclass(frozen=True)
class AnswerRow:
    """What the store sums for one app and model (and, for an experiment, one arm) over a period.

    ``costs``: per price, the cost of the calls priced so and the answers with such calls.
    ``unpriced_answers``: answers with at least one call without a price (that call is in no cost).
    """

    app: str
    model: str
    answers: int
    rated_answers: int
    rating_sum: float
    rating_sum_of_squares: float
    input_tokens: int
    output_tokens: int
    calls: int
    unpriced_answers: int = 0
    costs: tuple[PricedCost, ...] = ()
    experiment: str = ""
    arm: str = ""


@dataclass(frozen=True)
class ModelFigures:
    """The table's columns for one :class:`AnswerRow`."""

    row: AnswerRow
    # per price: the cost of its calls / the answers with such calls
    cost_per_answer: tuple[CostTotal, ...] = field(init=False)

    def __post_init__(self) -> None:
        per_answer = tuple(CostTotal(c.currency, c.virtual, divide_money(c.amount, c.answers))
                           for c in self.row.costs if c.answers)  # fmt: skip
        object.__setattr__(self, "cost_per_answer", per_answer)

    @cached_property
    def ratings(self) -> SampleSummary:
        row = self.row
        return SampleSummary.from_sums(row.rated_answers, row.rating_sum, row.rating_sum_of_squares)

    @property
    def mean_rating(self) -> float | None:
        return self.ratings.mean if self.row.rated_answers else None

    @cached_property
    def rating_interval(self) -> Interval | None:
        return mean_interval(self.ratings)

    @property
    def input_tokens_per_answer(self) -> float | None:
        return self.row.input_tokens / self.row.answers if self.row.answers else None

    @property
    def output_tokens_per_answer(self) -> float | None:
        return self.row.output_tokens / self.row.answers if self.row.answers else None

    @property
    def cost_per_rating_point(self) -> tuple[CostTotal, ...]:
        """Cost per answer / mean rating: what one point of rating costs (none without a positive mean)."""
        mean = self.mean_rating
        if mean is None or mean <= 0:
            return ()
        return tuple(CostTotal(c.currency, c.virtual, divide_money(c.amount, mean)) for c in self.cost_per_answer)
