from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenmeter.pricing import (
    PER_1K,
    PER_1M,
    Cost,
    Price,
    PriceSchedule,
    PriceTier,
    TokenCounts,
    cost_of,
    cost_of_tokens,
    cost_units,
    priced_parts,
)


def test_three_calls_at_a_per_1k_price_sum_exactly() -> None:
    price = Price(input=Decimal("0.0005"), output=Decimal("0.0015"), per=PER_1K, currency="USD")
    costs = [cost_of(price, 1000, 0) for _ in range(3)]
    total = sum((c.amount for c in costs if c.amount is not None), Decimal(0))
    assert total == Decimal("0.0015")
    assert str(total) == "0.0015"
    # Floats would not be exact (0.1 + 0.2 != 0.3), which is why Decimal is used end to end.
    assert sum([0.1] * 3) != 0.3


def test_per_1k_and_per_1m_prices() -> None:
    per_1m = Price(input=Decimal("2.50"), output=Decimal("10.00"), per=PER_1M, currency="USD")
    per_1k = Price(input=Decimal("0.0025"), output=Decimal("0.01"), per=PER_1K, currency="USD")
    a = cost_of(per_1m, 1000, 500)
    b = cost_of(per_1k, 1000, 500)
    assert a.amount == b.amount == Decimal("0.0075")
    assert a == Cost(amount=Decimal("0.0075"), currency="USD", virtual=False, unpriced=False)


def test_virtual_price_is_marked_on_the_cost() -> None:
    price = Price(input=Decimal("1"), output=Decimal("2"), per=PER_1M, currency="CNY", virtual=True)
    cost = cost_of(price, 1_000_000, 1_000_000)
    assert cost == Cost(amount=Decimal("3"), currency="CNY", virtual=True, unpriced=False)


def test_unknown_price_is_unpriced_never_zero() -> None:
    cost = cost_of(None, 1234, 567)
    assert cost == Cost(amount=None, currency=None, virtual=False, unpriced=True)
    assert cost.amount is None
    assert cost.amount != Decimal(0)


def test_zero_tokens_at_a_price_is_a_real_zero() -> None:
    price = Price(input=Decimal("1"), output=Decimal("2"), per=PER_1K, currency="USD")
    cost = cost_of(price, 0, 0)
    assert cost.amount == Decimal(0)
    assert not cost.unpriced


def test_huge_counts_stay_exact() -> None:
    price = Price(input=Decimal("0.123456789"), output=Decimal("9.87654321"), per=PER_1M, currency="USD")
    cost = cost_of(price, 10**15, 10**15 + 7)
    assert cost.amount == (
        Decimal(10**15) * Decimal("0.123456789") + Decimal(10**15 + 7) * Decimal("9.87654321")
    ) / Decimal(10**6)


@pytest.mark.parametrize(
    ("amount", "units"),
    [
        (Decimal("0.0075"), 7_500_000),
        (Decimal("1"), 1_000_000_000),
        (Decimal("0.0000000005"), 0),  # half to even: 0.5 -> 0
        (Decimal("0.0000000015"), 2),  # 1.5 -> 2
        (Decimal("0.0000000025"), 2),  # 2.5 -> 2
        (Decimal("1.2345678915"), 1_234_567_892),
        (Decimal("0.00000000049"), 0),
        (Decimal("0.00000000051"), 1),
    ],
)
def test_cost_units_rounds_half_even_to_billionths(amount: Decimal, units: int) -> None:
    assert cost_units(amount) == units


def test_invalid_prices_and_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="per must be 1000 or 1000000"):
        Price(input=Decimal("1"), output=Decimal("1"), per=10_000, currency="USD")
    with pytest.raises(ValueError, match="finite, non-negative Decimal"):
        Price(input=0.5, output=Decimal("1"), per=PER_1K, currency="USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite, non-negative Decimal"):
        Price(input=Decimal("-1"), output=Decimal("1"), per=PER_1K, currency="USD")
    price = Price(input=Decimal("1"), output=Decimal("1"), per=PER_1K, currency="USD")
    with pytest.raises(ValueError, match="must not be negative"):
        cost_of(price, -1, 0)
    with pytest.raises(ValueError, match="finite"):
        cost_units(Decimal("NaN"))


prices = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)


@given(
    input_price=prices,
    output_price=prices,
    per=st.sampled_from([PER_1K, PER_1M]),
    input_tokens=st.integers(0, 10**9),
    output_tokens=st.integers(0, 10**9),
)
def test_cost_is_exact_for_any_price_and_count(
    input_price: Decimal, output_price: Decimal, per: int, input_tokens: int, output_tokens: int
) -> None:
    cost = cost_of(Price(input_price, output_price, per, "USD"), input_tokens, output_tokens)
    assert cost.amount is not None
    assert cost.amount * per == input_tokens * input_price + output_tokens * output_price
    assert abs(Decimal(cost_units(cost.amount)) / 10**9 - cost.amount) <= Decimal("0.0000000005")


# --- token types, tiers and dates (docs/catalog.md) ---------------------------------------------------


def _deepseek_like() -> Price:
    # CNY per 1M: cache-miss input 2, cache-hit input 0.2, output 3 (reasoning at the output rate).
    return Price(input=Decimal(2), output=Decimal(3), per=PER_1M, currency="CNY", cached_input=Decimal("0.2"))


def test_cache_reads_cost_the_cached_rate_and_stay_part_of_the_input() -> None:
    tokens = TokenCounts(input=10_000, output=500, cache_read=8_960)
    cost = cost_of_tokens(_deepseek_like(), tokens)
    # (10000 - 8960) * 2 + 8960 * 0.2 + 500 * 3 = 2080 + 1792 + 1500 = 5372 per 1M
    assert cost.amount == Decimal("0.005372")
    assert (cost.tier, cost.price_from) == (None, None)


def test_every_rate_falls_back_to_its_totals_rate() -> None:
    price = Price(input=Decimal("2.5"), output=Decimal(10), per=PER_1M, currency="USD")
    tokens = TokenCounts(input=1000, output=400, cache_read=300, cache_creation=100, reasoning=250, audio_input=50,
                         audio_output=20)  # fmt: skip
    assert cost_of_tokens(price, tokens).amount == cost_of(price, 1000, 400).amount == Decimal("0.0065")


def test_each_rate_prices_its_own_part() -> None:
    price = Price(input=Decimal(3), output=Decimal(15), per=PER_1M, currency="USD", cached_input=Decimal("0.3"),
                  cache_write=Decimal("3.75"), reasoning=Decimal(20), audio_input=Decimal(40),
                  audio_output=Decimal(80))  # fmt: skip
    tokens = TokenCounts(input=1000, output=400, cache_read=300, cache_creation=100, reasoning=250, audio_input=50,
                         audio_output=20)  # fmt: skip
    parts = {name: (count, rate) for name, count, rate in priced_parts(price.tier_for(1000)[0], tokens)}
    assert parts == {
        "input": (550, Decimal(3)), "cached_input": (300, Decimal("0.3")), "cache_write": (100, Decimal("3.75")),
        "audio_input": (50, Decimal(40)), "output": (130, Decimal(15)), "reasoning": (250, Decimal(20)),
        "audio_output": (20, Decimal(80)),
    }  # fmt: skip
    # 1650 + 90 + 375 + 2000 + 1950 + 5000 + 1600 = 12665 per 1M
    assert cost_of_tokens(price, tokens).amount == Decimal("0.012665")


def _tiered() -> Price:
    # Qwen-style input-length tiers (CNY per 1K): up to 32K, up to 128K, above.
    return Price(
        input=Decimal("0.0024"), output=Decimal("0.0096"), per=PER_1K, currency="CNY",
        tiers=(PriceTier(32_000, Decimal("0.0024"), Decimal("0.0096")),
               PriceTier(128_000, Decimal("0.0048"), Decimal("0.0192"), cached_input=Decimal("0.00192")),
               PriceTier(None, Decimal("0.0072"), Decimal("0.0288"))),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("input_tokens", "tier", "amount"),
    [
        (32_000, 0, Decimal("0.0768") + Decimal("0.0096")),  # up_to is inclusive
        (32_001, 1, Decimal("0.1536048") + Decimal("0.0192")),
        (128_000, 1, Decimal("0.6144") + Decimal("0.0192")),
        (128_001, 2, Decimal("0.9216072") + Decimal("0.0288")),
    ],
)
def test_the_input_tokens_choose_the_tier(input_tokens: int, tier: int, amount: Decimal) -> None:
    cost = cost_of_tokens(_tiered(), TokenCounts(input_tokens, 1000))
    assert (cost.tier, cost.amount) == (tier, amount)


def test_a_tier_without_a_cached_rate_charges_its_own_input_rate() -> None:
    # Tier 1 has a cached rate; tier 0 has none, so its cache reads cost its input rate.
    assert cost_of_tokens(_tiered(), TokenCounts(40_000, 0, cache_read=10_000)).amount == Decimal("0.1632")
    assert cost_of_tokens(_tiered(), TokenCounts(20_000, 0, cache_read=10_000)).amount == Decimal("0.048")


def test_a_call_beyond_every_bounded_tier_uses_the_last() -> None:
    price = Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY",
                  tiers=(PriceTier(10, Decimal(1), Decimal(1)), PriceTier(20, Decimal(5), Decimal(5))))  # fmt: skip
    assert cost_of_tokens(price, TokenCounts(1_000_000, 0)).tier == 1


@pytest.mark.parametrize(
    "tiers",
    [
        (PriceTier(None, Decimal(1), Decimal(1)), PriceTier(10, Decimal(1), Decimal(1))),
        (PriceTier(20, Decimal(1), Decimal(1)), PriceTier(10, Decimal(1), Decimal(1))),
        (PriceTier(10, Decimal(1), Decimal(1)), PriceTier(10, Decimal(2), Decimal(2))),
    ],
)
def test_tiers_must_ascend_with_only_the_last_unbounded(tiers: tuple[PriceTier, ...]) -> None:
    with pytest.raises(ValueError, match="ascending up_to"):
        Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY", tiers=tiers)


def test_a_schedule_prices_a_call_with_the_price_valid_when_it_was_made() -> None:
    change = datetime(2026, 11, 15, tzinfo=timezone(timedelta(hours=8)))  # Beijing midnight = 16:00 UTC the 14th
    old = Price(input=Decimal(2), output=Decimal(8), per=PER_1M, currency="CNY")
    new = Price(input=Decimal(1), output=Decimal(4), per=PER_1M, currency="CNY", effective_from=change)
    schedule = PriceSchedule((old, new))
    just_before = datetime(2026, 11, 14, 15, 59, 59, 999999, tzinfo=UTC)
    assert schedule.at(just_before) is old
    assert schedule.at(datetime(2026, 11, 14, 16, tzinfo=UTC)) is new
    cost = cost_of_tokens(schedule.at(datetime(2026, 11, 20, tzinfo=UTC)), TokenCounts(1000, 1000))
    assert (cost.amount, cost.price_from) == (Decimal("0.005"), change)


def test_a_call_before_the_first_dated_price_is_unpriced() -> None:
    dated = Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY",
                  effective_from=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    assert PriceSchedule((dated,)).at(datetime(2025, 12, 31, tzinfo=UTC)) is None
    assert cost_of_tokens(None, TokenCounts(5, 5)).unpriced


def test_a_schedule_refuses_unordered_or_undated_later_prices() -> None:
    first = Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY",
                  effective_from=datetime(2026, 2, 1, tzinfo=UTC))  # fmt: skip
    earlier = Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY",
                    effective_from=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    undated = Price(input=Decimal(1), output=Decimal(1), per=PER_1M, currency="CNY")
    with pytest.raises(ValueError, match="ascending"):
        PriceSchedule((first, earlier))
    with pytest.raises(ValueError, match="only the first"):
        PriceSchedule((first, undated))


def test_parts_beyond_their_totals_are_refused_or_fitted() -> None:
    with pytest.raises(ValueError, match="parts of the input"):
        TokenCounts(input=10, output=0, cache_read=11)
    with pytest.raises(ValueError, match="parts of the output"):
        TokenCounts(input=0, output=10, reasoning=11)
    fitted = TokenCounts.fitted(10, 5, cache_read=8, cache_creation=8, reasoning=9, audio_input=3)
    assert fitted == TokenCounts(10, 5, cache_read=8, cache_creation=2, reasoning=5, audio_input=0)
