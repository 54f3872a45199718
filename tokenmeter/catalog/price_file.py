"""An entry's ``price:`` in a catalog file, read into a ``PriceSchedule`` (see docs/catalog.md "Prices").

``price:`` is one price (a mapping, as it always was) or the model's price history (a list, oldest
first; every price after the first has a ``from`` date). A price has rates per token type
(``cached_input``, ``cache_write``, ``reasoning``, ``audio_input``, ``audio_output`` beside ``input`` and
``output``), optional input-length ``tiers`` (a rate a tier leaves out is the price's own), the share of
those rates the provider bills for its Batch API's calls (``batch``) and, for people checking it, where it
comes from (``source``) and when that was last checked (``checked``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final

from pydantic import Field
from pydantic.functional_validators import AfterValidator, PlainValidator, model_validator
from pydantic.types import Discriminator, StringConstraints, Tag

from tokenmeter.catalog.entry import PriceSource
from tokenmeter.catalog.strict_model import Amount, Strict, Text, field_problem, problem
from tokenmeter.pricing import PER_1K, PER_1M, RATE_FIELDS, Price, PriceSchedule, PriceTier

OPTIONAL_RATES: Final = RATE_FIELDS[2:]  # cached_input ... audio_output: absent, they bill at their total's rate
PRICE_TAGS: Final = ("one", "history")  # the two forms of `price:`, as named in an error's location
_PER_VALUES: Final[dict[str, int]] = {"1K": PER_1K, "1M": PER_1M}
# `up_to: 128K`: K and M as context sizes are counted (1,024 and 1,048,576 tokens).
_TOKEN_SIZE: Final = re.compile(r"^\s*([1-9][0-9]*)\s*([KkMm])\s*$")
_SIZE_UNITS: Final = {"k": 1024, "m": 1024 * 1024}
# Other APIs' words for our rate and field names: the did-you-mean hint when a file uses one.
_HINTS: Final = {
    "cache_read": "cached_input",
    "cache_hit": "cached_input",
    "cached": "cached_input",
    "cached_input_tokens": "cached_input",
    "cache_creation": "cache_write",
    "cache_miss": "input",
    "reasoning_output": "reasoning",
    "thinking": "reasoning",
    "prompt": "input",
    "completion": "output",
    "effective_from": "from",
    "since": "from",
    "url": "source",
}

_AMOUNT = 'must be a non-negative number such as "0.5" or 0.5, got {got}'
# What each price field must be (catalog_file reports "<field> <text>"; see its _EXPECTED).
PRICE_EXPECTED: Final[dict[str, str]] = {
    "price": "must be a mapping with input, output, per and currency, or a list of such prices (oldest first, "
    "every one after the first with a from date), got {kind}",
    "price[]": "must be a mapping with input, output, per and currency, got {kind}",
    **{f"price.{name}": _AMOUNT for name in RATE_FIELDS},
    "price.per": 'must be "1K" or "1M", got {value}',
    "price.currency": 'must be a currency code such as "USD" or "CNY", got {value}',
    "price.virtual": "must be true or false, got {value}",
    "price.batch": "must be the share of the standard rates a batch call costs, above 0 and at most 1, such as "
    '"0.5" (half price), got {got}',
    "price.tiers": "must be a list of input-length tiers, each {{up_to: <input tokens>, input: ..., output: ...}}, "
    "smallest first, got {got}",
    "price.tiers[]": "must be a mapping such as {{up_to: 32K, input: ..., output: ...}}, got {got}",
    "price.tiers.up_to": 'must be a number of input tokens such as 32768 or "32K" (K = 1,024 and M = 1,048,576 '
    "tokens), got {got}",
    **{f"price.tiers.{name}": _AMOUNT for name in RATE_FIELDS},
    "price.from": "must be a date such as 2026-11-01 (taken as 00:00 UTC) or a time with its UTC offset such as "
    "2026-11-15T00:00:00+08:00, got {got}",
    "price.source": "must say where the price comes from, such as the provider's price page URL, got {got}",
    "price.checked": "must be the date the price was last checked against its source, such as 2026-12-06, got {got}",
}


def _per(value: object) -> int:
    per = _PER_VALUES.get(value.strip().upper()) if isinstance(value, str) else value
    if type(per) is not int or per not in (PER_1K, PER_1M):  # no bool, no float
        raise ValueError(value)
    return per


def _up_to(value: object) -> int | None:
    if value is None or (type(value) is int and value > 0):
        return value  # type: ignore[return-value]
    size = _TOKEN_SIZE.match(value) if isinstance(value, str) else None
    if size is None:
        raise ValueError(value)
    return int(size[1]) * _SIZE_UNITS[size[2].lower()]


def _iso(text: str) -> date | datetime:
    try:
        return date.fromisoformat(text) if len(text.strip()) == len("2026-11-01") else datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(text) from None


def _moment(value: object) -> datetime:
    """A YAML date (00:00 UTC), or a time with its offset (YAML timestamp or ISO text), as UTC."""
    value = _iso(value) if isinstance(value, str) else value
    if isinstance(value, datetime):
        if value.utcoffset() is None:  # a naive time: which midnight it means is unknowable
            raise ValueError(value)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(value)


def _day(value: object) -> date:
    value = _iso(value) if isinstance(value, str) else value
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError(value)
    return value


_Rate = Amount | None
# The Batch API's share of every rate: a discount, never a surcharge, never free (leave it out for full price).
_BatchShare = Annotated[Amount, Field(gt=0, le=1)]


class _Tier(Strict):  # the rates for calls with at most up_to input tokens; a rate left out is the price's own
    field_hints = _HINTS
    up_to: Annotated[int | None, PlainValidator(_up_to)] = None
    input: _Rate = None
    output: _Rate = None
    cached_input: _Rate = None
    cache_write: _Rate = None
    reasoning: _Rate = None
    audio_input: _Rate = None
    audio_output: _Rate = None

    def rates(self, price: Price) -> PriceTier:
        own = {name: getattr(self, name) for name in RATE_FIELDS}
        inherited = {name: getattr(price, name) if rate is None else rate for name, rate in own.items()}
        return PriceTier(self.up_to, **inherited)


class _Price(Strict):
    field_hints = _HINTS
    input: Amount
    output: Amount
    per: Annotated[int, PlainValidator(_per)]
    currency: Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{3,8}$")]
    virtual: bool = False
    cached_input: _Rate = None
    cache_write: _Rate = None
    reasoning: _Rate = None
    audio_input: _Rate = None
    audio_output: _Rate = None
    tiers: list[_Tier] | None = None
    effective_from: Annotated[datetime | None, PlainValidator(_moment)] = Field(None, alias="from")
    source: Text | None = None
    checked: Annotated[date | None, PlainValidator(_day)] = None
    batch: _BatchShare | None = None  # last: the allowed fields an error lists keep their order

    @model_validator(mode="after")
    def _tiers_ascend(self) -> _Price:
        if self.tiers is None:
            return self
        if not self.tiers:
            raise field_problem("tiers", "must list at least one tier, or be left out")
        bounds = [tier.up_to for tier in self.tiers]
        for index, bound in enumerate(bounds[:-1]):
            if bound is None:
                raise field_problem(f"tiers[{index}].up_to", "is missing: only the last tier may leave it out")
        for index, (below, bound) in enumerate(itertools.pairwise(bounds), 1):
            if bound is not None and below is not None and bound <= below:
                text = f"({bound}) must be more than tiers[{index - 1}].up_to ({below}): list the tiers smallest first"
                raise field_problem(f"tiers[{index}].up_to", text)
        return self

    def to_price(self) -> Price:
        own = Price(
            per=self.per,
            currency=self.currency,
            virtual=self.virtual,
            effective_from=self.effective_from,
            batch=self.batch,
            **{name: getattr(self, name) for name in RATE_FIELDS},
        )
        return replace(own, tiers=tuple(tier.rates(own) for tier in self.tiers)) if self.tiers else own


def _oldest_first(prices: list[_Price]) -> list[_Price]:
    if not prices:
        raise problem("price must list at least one price (oldest first), or be one mapping")
    for index, (earlier, later) in enumerate(itertools.pairwise(prices), 1):
        if later.effective_from is None:
            raise problem(f"price[{index}].from is required: only the first price may leave it out (it holds always)")
        start, previous = later.effective_from, earlier.effective_from
        if previous is not None and start <= previous:
            how = "is the same moment as" if start == previous else "is before"
            raise problem(
                f"price[{index}].from ({start.isoformat()}) {how} price[{index - 1}].from ({previous.isoformat()}): "
                "list the prices oldest first, each from its own date"
            )
    return prices


def _form(value: Any) -> str:
    return "history" if isinstance(value, list) else "one"


PriceField = Annotated[
    Annotated[_Price, Tag("one")] | Annotated[list[_Price], AfterValidator(_oldest_first), Tag("history")],
    Discriminator(_form),
]


def read_schedule(price: _Price | list[_Price]) -> tuple[PriceSchedule, tuple[PriceSource, ...]]:
    """The entry's prices over time, and where each comes from (same order)."""
    prices = price if isinstance(price, list) else [price]
    schedule = PriceSchedule(tuple(item.to_price() for item in prices))
    return schedule, tuple(PriceSource(item.source, item.checked) for item in prices)
