"""A pair (A -> B) within an app: what moving from A to B would have cost, and how the ratings differ.

Cost: ``answers_A x (cost per answer of A - cost per answer of B)``, in one currency (real and virtual
prices of a currency are added, and said which they were). Unpriced on either side, or costs in
different currencies: the difference is unknown, and the sentence says why.

Quality: ``d = mean_B - mean_A`` with Welch's 95 % interval. Fewer than ``min_ratings`` rated answers on
either side: too few ratings to tell, no verdict. Else, with the equivalence ``margin`` (rating points):
the interval inside (-margin, +margin) is similar quality; wholly below 0, B rates lower; wholly above 0,
B rates higher; otherwise unclear. Similar is asked first: a difference the interval bounds within the
margin is similar even when it is not 0.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from tokenmeter.comparison.answer_rows import MONEY_PLACES, CostTotal, ModelFigures
from tokenmeter.comparison.money_text import money_text, signed
from tokenmeter.comparison.statistics import Interval, welch_interval

MIN_RATINGS: Final = 10
MARGIN: Final = 5.0

Quality = Literal["too_few_ratings", "similar", "lower", "higher", "unclear"]
CostDirection = Literal["cheaper", "costlier", "same", "unknown"]
# The verdict by quality and cost (None: the cost is the same or unknown); {second} is model B.
_VERDICTS: Final[dict[tuple[str, str | None], str]] = {
    ("similar", "cheaper"): "{second} is cheaper at similar quality",
    ("similar", "costlier"): "{second} costs more at similar quality",
    ("similar", None): "similar quality",
    ("lower", "cheaper"): "{second} is cheaper but rates lower",
    ("lower", "costlier"): "{second} rates lower and costs more",
    ("lower", None): "{second} rates lower",
    ("higher", "cheaper"): "{second} rates higher and is cheaper",
    ("higher", "costlier"): "{second} rates higher but costs more",
    ("higher", None): "{second} rates higher",
}


@dataclass(frozen=True)
class CostDifference:
    """What B would have cost less than A (negative: more), or None with the ``reason`` it is unknown."""

    saving: CostTotal | None
    price_kind: str = ""  # "virtual", "real" or "real and virtual"
    reason: str = ""

    @property
    def direction(self) -> CostDirection:
        if self.saving is None:
            return "unknown"
        return "cheaper" if self.saving.amount > 0 else "costlier" if self.saving.amount < 0 else "same"


@dataclass(frozen=True)
class PairFinding:
    """One pair's finding as data, and :attr:`sentence`, the same in plain words."""

    app: str
    first: ModelFigures  # A: the model the app would move from
    second: ModelFigures  # B: the model it would move to
    cost: CostDifference
    rating_difference: Interval | None
    quality: Quality
    sentence: str


def pair_finding(first: ModelFigures, second: ModelFigures, period: str, *,
                 min_ratings: int = MIN_RATINGS, margin: float = MARGIN) -> PairFinding:  # fmt: skip
    """The finding for moving ``first.row.app`` from ``first`` to ``second`` over ``period`` (a label)."""
    cost = cost_difference(first, second)
    interval = welch_interval(first.ratings, second.ratings)
    enough = min(first.row.rated_answers, second.row.rated_answers) >= max(min_ratings, 2)
    quality = quality_of(interval, margin) if enough and interval is not None else "too_few_ratings"
    words = _cost_words(first, second, cost, period)
    if quality == "too_few_ratings":
        words += (f"; too few ratings to tell ({_name(first)} {first.row.rated_answers}, "
                  f"{_name(second)} {second.row.rated_answers}; at least {min_ratings} each)")  # fmt: skip
    else:
        assert interval is not None
        words += (f"; rating difference {signed(interval.estimate)} (95 % CI {signed(interval.low)} .. "
                  f"{signed(interval.high)}): {_verdict(_name(second), quality, cost.direction, margin)}")  # fmt: skip
    return PairFinding(first.row.app, first, second, cost, interval, quality, words)


def quality_of(interval: Interval, margin: float) -> Quality:
    if -margin < interval.low and interval.high < margin:
        return "similar"
    if interval.high < 0:
        return "lower"
    if interval.low > 0:
        return "higher"
    return "unclear"


def cost_difference(first: ModelFigures, second: ModelFigures) -> CostDifference:
    unpriced = [_name(side) for side in (first, second) if not side.cost_per_answer]
    if unpriced:
        return CostDifference(None, reason=f"{' and '.join(unpriced)} {'is' if len(unpriced) == 1 else 'are'} "
                                           "unpriced (no price in the model catalog)")  # fmt: skip
    currencies = [sorted({c.currency for c in side.cost_per_answer}) for side in (first, second)]
    if len(currencies[0]) != 1 or currencies[0] != currencies[1]:
        listed = "; ".join(
            f"{_name(side)}: {', '.join(found)}" for side, found in zip((first, second), currencies, strict=True)
        )
        return CostDifference(None, reason=f"the costs are in different currencies ({listed}), never converted")
    with decimal.localcontext(decimal.Context(prec=50)):
        each = [sum((c.amount for c in side.cost_per_answer), Decimal(0)) for side in (first, second)]
        saving = (first.row.answers * (each[0] - each[1])).quantize(MONEY_PLACES)
    kinds = {c.virtual for side in (first, second) for c in side.cost_per_answer}
    kind = "real and virtual" if len(kinds) == 2 else "virtual" if True in kinds else "real"
    return CostDifference(CostTotal(currencies[0][0], True in kinds, saving), kind)


def _name(side: ModelFigures) -> str:
    """The model, with its arm in an experiment (both arms may run the same model)."""
    return f"{side.row.model} ({side.row.arm})" if side.row.arm else side.row.model


def _cost_words(first: ModelFigures, second: ModelFigures, cost: CostDifference, period: str) -> str:
    experiment = f"experiment {first.row.experiment}: " if first.row.experiment else ""
    moving = f"{experiment}moving {first.row.app} from {_name(first)} to {_name(second)}"
    saving = cost.saving
    if saving is None:
        return f"{moving}: the cost difference in {period} is unknown: {cost.reason}"
    if saving.amount == 0:
        said = f"would have cost the same in {period}"
    else:
        said = (f"would have cost {money_text(abs(saving.amount), saving.currency)} "
                f"{'less' if saving.amount > 0 else 'more'} in {period}")  # fmt: skip
    notes = [f"{cost.price_kind} prices"] + [
        f"{side.row.unpriced_answers} of {side.row.answers} answers of {_name(side)} with unpriced calls, whose "
        "cost is unknown"
        for side in (first, second)
        if side.row.unpriced_answers
    ]
    return f"{moving} {said} ({'; '.join(notes)})"


def _verdict(second: str, quality: Quality, direction: CostDirection, margin: float) -> str:
    if quality == "unclear":
        return f"not enough ratings to tell whether the quality differs by less than {margin:g} points"
    template = _VERDICTS.get((quality, direction)) or _VERDICTS[quality, None]
    return template.format(second=second)
