from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenmeter.pricing import PER_1K, PER_1M, Cost, Price, cost_of, cost_units


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
