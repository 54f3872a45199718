"""CPU per call of pricing a metered call (docs/catalog.md), the part of the finisher's work that issue 23 grew.

Side by side in one run, rounds interleaved, each over the same 10,000 calls:
- ``flat (before)``: one undated input/output price, priced by the function every call ran before issue 23
  (kept below as ``cost_before``, unchanged);
- ``flat (now)``: the same price through today's ``cost_of`` (which builds ``TokenCounts``);
- ``typed``: the same model with a cached-input and a reasoning rate, ``cost_of_tokens`` on counts with
  cache reads and reasoning (a DeepSeek call);
- ``tiered + dated``: a schedule of three dated prices with three input-length tiers each, the price looked
  up for the call's time (``PriceSchedule.at``) and then ``cost_of_tokens`` (a DashScope Qwen call);
- ``catalog lookup + dated``: as above through ``ModelCatalog.price_at`` (the name lookup is cached).
Prints p50 / p99 per call in µs and the ratio to ``flat``.

    .venv/bin/python bench/pricing_cost.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import decimal
import gc
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tokenmeter.catalog import ModelCatalog
from tokenmeter.catalog.entry import ModelEntry
from tokenmeter.pricing import (
    _EXACT,
    PER_1M,
    Cost,
    Price,
    PriceSchedule,
    PriceTier,
    TokenCounts,
    _without_trailing_zeros,
    cost_of,
    cost_of_tokens,
)

CALLS = 10_000
Counts = tuple[int, int, int, int, int]
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)


def tiered_schedule() -> PriceSchedule:
    def price(scale: int, start: datetime | None) -> Price:
        tiers = tuple(
            PriceTier(bound, Decimal(scale) * Decimal("0.8") * step, Decimal(scale) * 2 * step,
                      cached_input=Decimal(scale) * Decimal("0.16") * step)
            for step, bound in ((1, 32_000), (2, 128_000), (3, None))
        )  # fmt: skip
        return Price(input=tiers[0].input, output=tiers[0].output, per=PER_1M, currency="CNY", tiers=tiers,
                     effective_from=start)  # fmt: skip

    return PriceSchedule((price(3, None), price(2, MONTH_START + timedelta(days=10)),
                          price(1, MONTH_START + timedelta(days=20))))  # fmt: skip


def calls(seed: int = 23) -> list[tuple[datetime, Counts]]:
    pick = random.Random(seed)
    made = []
    for _ in range(CALLS):
        input_tokens, output = pick.randint(200, 60_000), pick.randint(50, 2_000)
        # input, output, cache reads (DeepSeek's 64-token units), cache writes, reasoning: TokenCounts' order
        counts = (input_tokens, output, pick.randint(0, input_tokens // 128) * 64, 0, pick.randint(0, output))
        made.append((MONTH_START + timedelta(seconds=pick.randint(0, 30 * 86_400)), counts))
    return made


def cost_before(price: Price, input_tokens: int, output_tokens: int) -> Cost:
    """``tokenmeter.pricing.cost_of`` as it was before token types, tiers and dates (for comparison only)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must not be negative")
    with decimal.localcontext(_EXACT):
        total = Decimal(input_tokens) * price.input + Decimal(output_tokens) * price.output
        amount = _without_trailing_zeros(total.scaleb(-6))
    return Cost(amount=amount, currency=price.currency, virtual=price.virtual, unpriced=False)


def sides(workload: list[tuple[datetime, Counts]]) -> dict[str, Callable[[datetime, Counts], object]]:
    flat = Price(input=Decimal(2), output=Decimal(3), per=PER_1M, currency="CNY")
    typed = Price(input=Decimal(2), output=Decimal(3), per=PER_1M, currency="CNY", cached_input=Decimal("0.2"),
                  reasoning=Decimal(3))  # fmt: skip
    schedule = tiered_schedule()
    catalog = ModelCatalog([ModelEntry("qwen-plus*", "dashscope", None, None, schedule, None)])
    return {
        "flat (before)": lambda _when, counts: cost_before(flat, counts[0], counts[1]),
        "flat (now)": lambda _when, counts: cost_of(flat, counts[0], counts[1]),
        "typed": lambda _when, counts: cost_of_tokens(typed, TokenCounts(*counts)),
        "tiered + dated": lambda when, counts: cost_of_tokens(schedule.at(when), TokenCounts(*counts)),
        "catalog lookup + dated": lambda when, counts: cost_of_tokens(
            catalog.price_at("qwen-plus", when), TokenCounts(*counts)
        ),
    }


def timed(price: Callable[[datetime, Counts], object], workload: list[tuple[datetime, Counts]]) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for when, tokens in workload:
        start = clock()
        price(when, tokens)
        samples.append((clock() - start) / 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    workload = calls()
    priced = sides(workload)
    samples: dict[str, list[float]] = {name: [] for name in priced}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, price in priced.items():
                samples[name] += timed(price, workload[: CALLS // rounds or CALLS])
    finally:
        gc.enable()
    base = statistics.median(samples["flat (before)"])
    base_p99 = statistics.quantiles(samples["flat (before)"], n=100)[98]
    print(f"{'side':<24}{'p50 µs':>10}{'p99 µs':>10}{'p50 ratio':>11}{'p99 ratio':>11}")
    for name, values in samples.items():
        p50, p99 = statistics.median(values), statistics.quantiles(values, n=100)[98]
        print(f"{name:<24}{p50:>10.2f}{p99:>10.2f}{p50 / base:>10.2f}x{p99 / base_p99:>10.2f}x")


if __name__ == "__main__":
    main()
