"""Prices and the cost of a call: pure functions over Decimal, never floats.

A ``Price`` says what ``per`` tokens of each type cost, in one currency: input and output,
and where the provider bills them differently, cache reads, cache writes, reasoning and audio
(a type without a rate of its own costs its total's rate: a cache read costs an input token).
A price may have input-length ``tiers`` (the call's input tokens choose one), an
``effective_from`` date, and a ``batch`` multiplier: the share of every rate a provider bills for its
Batch API's calls (OpenAI's: 0.5). A ``PriceSchedule`` is a model's prices over time, so a call is priced
with the price valid when it was made.

``cost_of_tokens`` turns a call's ``TokenCounts`` into a ``Cost``; an unknown model has no price
and its cost is *unpriced* (amount ``None``), never a silent 0. ``cost_units`` turns an amount
into an exact integer count of billionths of the currency unit, which is what the cost counters
add up (integers add exactly, floats do not).
"""

from __future__ import annotations

import decimal
import itertools
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cached_property
from typing import Final

from tokenmeter.semconv import COST_UNITS_PER_CURRENCY_UNIT

# The two token blocks prices are quoted in.
PER_1K: Final = 1_000
PER_1M: Final = 1_000_000
_PER_EXPONENT: Final = {PER_1K: 3, PER_1M: 6}
_UNITS_EXPONENT: Final = len(str(COST_UNITS_PER_CURRENCY_UNIT)) - 1  # 9: billionths
# Wide enough that no realistic count times price is ever rounded; Inexact is trapped
# so a rounding would raise instead of silently changing a bill.
_EXACT = decimal.Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])

# The rate fields of a price and of a tier; the optional ones fall back to the rate of their total.
RATE_FIELDS: Final = ("input", "output", "cached_input", "cache_write", "reasoning", "audio_input", "audio_output")
# The parts of a call's tokens, each billed at the rate of the same name (input and output: the plain ones).
PRICED_PARTS: Final = ("input", "cached_input", "cache_write", "audio_input", "output", "reasoning", "audio_output")
_FALLBACK: Final = {
    "cached_input": "input",
    "cache_write": "input",
    "audio_input": "input",
    "reasoning": "output",
    "audio_output": "output",
}


def _check_batch(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Decimal) or not value.is_finite() or not Decimal(0) < value <= Decimal(1):
        raise ValueError(
            f"Price.batch must be a Decimal above 0 and at most 1 (the share of the standard rates a batch call "
            f'is billed), got {value!r}; build it from a string, e.g. Decimal("0.5")'
        )


def _check_rate(owner: str, name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(
            f"{owner}.{name} must be a finite, non-negative Decimal, got {value!r}; "
            'build it from a string, e.g. Decimal("0.0005")'
        )


@dataclass(frozen=True)
class TokenCounts:
    """A call's billed tokens by type.

    ``input`` includes the cache reads, cache writes and audio input; ``output`` includes the
    reasoning and audio output (as the GenAI conventions and the servers count them). The parts
    are 0 when the server did not report them.
    """

    input: int
    output: int
    cache_read: int = 0
    cache_creation: int = 0
    reasoning: int = 0
    audio_input: int = 0
    audio_output: int = 0

    def __post_init__(self) -> None:
        counts = (self.input, self.output, self.cache_read, self.cache_creation, self.reasoning, self.audio_input,
                  self.audio_output)  # fmt: skip
        if not all(type(count) is int and count >= 0 for count in counts):  # per call: no fields() walk
            for item in fields(self):
                value = getattr(self, item.name)
                if type(value) is not int or value < 0:
                    raise ValueError(f"TokenCounts.{item.name} must be a non-negative int, got {value!r}")
        if self.cache_read + self.cache_creation + self.audio_input > self.input:
            raise ValueError(
                f"cache reads ({self.cache_read}), cache writes ({self.cache_creation}) and audio input "
                f"({self.audio_input}) are parts of the input ({self.input}) and cannot exceed it"
            )
        if self.reasoning + self.audio_output > self.output:
            raise ValueError(
                f"reasoning ({self.reasoning}) and audio output ({self.audio_output}) are parts of the output "
                f"({self.output}) and cannot exceed it"
            )

    @classmethod
    def fitted(
        cls,
        input: int,
        output: int,
        *,
        cache_read: int = 0,
        cache_creation: int = 0,
        reasoning: int = 0,
        audio_input: int = 0,
        audio_output: int = 0,
    ) -> TokenCounts:
        """Counts as a server reported them, parts cut down to fit their totals (a part beyond its total is
        a server's error; the total is the bill, the parts only say how to price it)."""
        input, output = max(input, 0), max(output, 0)
        cache_read = min(max(cache_read, 0), input)
        cache_creation = min(max(cache_creation, 0), input - cache_read)
        audio_input = min(max(audio_input, 0), input - cache_read - cache_creation)
        reasoning = min(max(reasoning, 0), output)
        audio_output = min(max(audio_output, 0), output - reasoning)
        return cls(input, output, cache_read, cache_creation, reasoning, audio_input, audio_output)

    @property
    def fresh_input(self) -> int:
        """Input tokens billed at the plain input rate: neither cache reads, cache writes nor audio."""
        return self.input - self.cache_read - self.cache_creation - self.audio_input

    @property
    def response_output(self) -> int:
        """Output tokens billed at the plain output rate: neither reasoning nor audio."""
        return self.output - self.reasoning - self.audio_output


@dataclass(frozen=True)
class PriceTier:
    """The rates for calls with at most ``up_to`` input tokens (``None``: no upper bound).

    A rate left ``None`` falls back to the rate of its total (a cache read costs the tier's input rate).
    """

    up_to: int | None
    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None

    def __post_init__(self) -> None:
        if self.up_to is not None and (not isinstance(self.up_to, int) or self.up_to <= 0):
            raise ValueError(f"PriceTier.up_to must be a positive number of input tokens or None, got {self.up_to!r}")
        for name in RATE_FIELDS:
            _check_rate("PriceTier", name, getattr(self, name), optional=name not in ("input", "output"))

    def rate(self, name: str) -> Decimal:
        """The rate of token type ``name`` (one of RATE_FIELDS), its total's rate when it has none."""
        value: Decimal | None = getattr(self, name)
        return value if value is not None else getattr(self, _FALLBACK[name])

    @cached_property
    def billed_rates(self) -> tuple[Decimal, ...]:
        """The rates in PRICED_PARTS order, fallbacks resolved (once per tier: pricing runs per call)."""
        return tuple(self.input if name == "input" else self.output if name == "output" else self.rate(name)
                     for name in PRICED_PARTS)  # fmt: skip


@dataclass(frozen=True)
class Price:
    """What ``per`` tokens of each type cost, in ``currency``.

    ``virtual`` marks an internal price (e.g. for a free self-hosted model) that is accounted like a real
    one but must not be mistaken for an invoice. ``tiers`` (ascending ``up_to``) replace the price's own
    rates by the call's input tokens: the first tier whose ``up_to`` holds them, else the last tier.
    ``effective_from`` (UTC) is when the price starts to hold; ``None`` means since always. ``batch`` is the
    share of every rate (tiers' included) a call made through the provider's Batch API costs; ``None``: the
    provider's batch calls cost the standard rates.
    """

    input: Decimal
    output: Decimal
    per: int  # PER_1K or PER_1M tokens
    currency: str
    virtual: bool = False
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    audio_input: Decimal | None = None
    audio_output: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    effective_from: datetime | None = None
    batch: Decimal | None = None

    def __post_init__(self) -> None:
        _check_batch(self.batch)
        if self.per not in _PER_EXPONENT:
            raise ValueError(f"Price.per must be {PER_1K} or {PER_1M} tokens, got {self.per!r}")
        for name in RATE_FIELDS:
            _check_rate("Price", name, getattr(self, name), optional=name not in ("input", "output"))
        if not self.currency:
            raise ValueError('Price.currency must be a currency code such as "USD" or "CNY"')
        bounds = [tier.up_to for tier in self.tiers]
        bounded = [bound for bound in bounds if bound is not None]
        if None in bounds[:-1] or any(low >= high for low, high in itertools.pairwise(bounded)):
            raise ValueError(
                f"Price.tiers must have strictly ascending up_to, only the last one unbounded; got {bounds}"
            )
        if self.effective_from is not None and self.effective_from.tzinfo is None:
            raise ValueError("Price.effective_from must be timezone-aware (UTC)")

    def tier_for(self, input_tokens: int) -> tuple[PriceTier, int | None]:
        """The rates for a call with ``input_tokens``, and the index of its tier (None without tiers)."""
        if not self.tiers:
            return self._own_rates, None
        for index, tier in enumerate(self.tiers):
            if tier.up_to is None or input_tokens <= tier.up_to:
                return tier, index
        return self.tiers[-1], len(self.tiers) - 1

    @cached_property
    def _own_rates(self) -> PriceTier:
        return PriceTier(None, **{name: getattr(self, name) for name in RATE_FIELDS})


@dataclass(frozen=True)
class PriceSchedule:
    """A model's prices over time, oldest first: each holds from its ``effective_from`` until the next one's.

    The first price may be undated (it holds since always). A call before the first dated price is unpriced.
    """

    prices: tuple[Price, ...]

    def __post_init__(self) -> None:
        if not self.prices:
            raise ValueError("PriceSchedule needs at least one price")
        if any(price.effective_from is None for price in self.prices[1:]):
            raise ValueError("only the first price of a schedule may be undated (effective_from None)")
        dates = [price.effective_from for price in self.prices if price.effective_from is not None]
        if dates != sorted(dates) or len(set(dates)) != len(dates):
            raise ValueError(f"a schedule's prices must have ascending, distinct effective dates, got {dates}")

    def at(self, when: datetime) -> Price | None:
        """The price valid at ``when`` (timezone-aware), or None before the first dated price."""
        valid = None
        for price in self.prices:
            if price.effective_from is not None and price.effective_from > when:
                break
            valid = price
        return valid

    def current(self) -> Price | None:
        """The price valid now."""
        return self.at(datetime.now(UTC))


@dataclass(frozen=True)
class Cost:
    """The cost of one call. ``unpriced`` calls have no amount and no currency.

    ``tier`` is the index of the input-length tier the call was priced at (None: the price has no tiers),
    ``price_from`` the effective date of the price used (None: an undated price).
    """

    amount: Decimal | None
    currency: str | None
    virtual: bool
    unpriced: bool
    tier: int | None = None
    price_from: datetime | None = None


UNPRICED: Final = Cost(amount=None, currency=None, virtual=False, unpriced=True)


def _without_trailing_zeros(amount: Decimal) -> Decimal:
    """``0.0015000`` -> ``0.0015`` and ``10.00`` -> ``10`` (same value, never exponent notation)."""
    tidy = amount.normalize()
    exponent = tidy.as_tuple().exponent
    return tidy.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else tidy


def _part_counts(tokens: TokenCounts) -> tuple[int, ...]:
    """The call's tokens split by the rate they are billed at, in PRICED_PARTS order."""
    return (tokens.fresh_input, tokens.cache_read, tokens.cache_creation, tokens.audio_input,
            tokens.response_output, tokens.reasoning, tokens.audio_output)  # fmt: skip


def priced_parts(rates: PriceTier, tokens: TokenCounts) -> list[tuple[str, int, Decimal]]:
    """The call's tokens by the rate they are billed at: (rate name, tokens, rate per ``per`` tokens)."""
    return list(zip(PRICED_PARTS, _part_counts(tokens), rates.billed_rates, strict=True))


def cost_of_tokens(price: Price | None, tokens: TokenCounts, *, batch: bool = False) -> Cost:
    """The exact cost of a call's ``tokens`` at ``price`` (its tier chosen by the input tokens).

    ``batch``: the call was made through the provider's Batch API, so every rate is scaled by the price's
    ``batch`` share (a price without one: the standard rates). ``price=None`` (model not in the catalog, no
    price given, or a call before the first dated price) yields an unpriced cost with ``amount=None``: never 0.
    """
    if price is None:
        return UNPRICED
    rates, tier = price.tier_for(tokens.input)
    with decimal.localcontext(_EXACT):
        parts = zip(_part_counts(tokens), rates.billed_rates, strict=True)
        per_block = sum((Decimal(count) * rate for count, rate in parts if count), Decimal(0))
        if batch and price.batch is not None:
            per_block *= price.batch  # the same as scaling each rate: the multiplier is exact, and so is the sum
        return _priced(price, tier, per_block)


def cost_of(price: Price | None, input_tokens: int, output_tokens: int) -> Cost:
    """The exact cost of ``input_tokens`` and ``output_tokens`` at ``price``, none of them cached or reasoning
    (the same as ``cost_of_tokens`` of plain counts, without building them: the quota check's estimates)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(
            f"token counts must not be negative, got input_tokens={input_tokens}, output_tokens={output_tokens}"
        )
    if price is None:
        return UNPRICED
    rates, tier = price.tier_for(input_tokens)
    with decimal.localcontext(_EXACT):
        return _priced(price, tier, Decimal(input_tokens) * rates.input + Decimal(output_tokens) * rates.output)


def _priced(price: Price, tier: int | None, per_block: Decimal) -> Cost:
    """The cost of ``per_block`` (the sum of tokens x rates, per ``price.per`` tokens); in the exact context."""
    amount = _without_trailing_zeros(per_block.scaleb(-_PER_EXPONENT[price.per]))
    return Cost(amount, price.currency, price.virtual, False, tier, price.effective_from)


def cost_units(amount: Decimal) -> int:
    """``amount`` as an integer number of billionths of its currency unit.

    Rounds half to even at the ninth decimal place: ``Decimal("0.0000000005")`` -> 0,
    ``Decimal("0.0000000015")`` -> 2.
    """
    if not amount.is_finite():
        raise ValueError(f"cost amount must be finite, got {amount!r}")
    with decimal.localcontext(decimal.Context(prec=60, traps=[decimal.InvalidOperation])):
        return int(amount.scaleb(_UNITS_EXPONENT).to_integral_value(rounding=ROUND_HALF_EVEN))
