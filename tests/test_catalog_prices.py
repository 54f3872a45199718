"""Prices in the catalog file: per token type, per input-length tier, with history and provenance.

Costs are compared to hand-computed Decimal values to the last digit; the working is in the comments.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.catalog import CatalogError, ModelCatalog
from tokenmeter.catalog.entry import ModelEntry, PriceSource
from tokenmeter.cli import main
from tokenmeter.pricing import PER_1M, Price, PriceTier, TokenCounts, cost_of_tokens

BEIJING = timezone(timedelta(hours=8))


@pytest.fixture(scope="module")
def builtin() -> ModelCatalog:
    return ModelCatalog.load()


def load(tmp_path: Path, text: str) -> ModelCatalog:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return ModelCatalog.load(path)


def entry_of(catalog: ModelCatalog, model: str) -> ModelEntry:
    entry = catalog.lookup(model)
    assert isinstance(entry, ModelEntry)
    return entry


HISTORY = """
- match: corp-chat
  price:
    - {input: "2", cached_input: "0.5", output: "8", per: 1M, currency: CNY,
       source: https://example.com/prices, checked: 2026-12-06}
    - {from: 2026-11-15T00:00:00+08:00, input: "1", cached_input: "0.1", reasoning: "12", output: "4", per: 1M,
       currency: CNY}
    - {from: "2026-12-01", input: "1", output: "4", per: 1M, currency: CNY}
"""


# --- the forms -------------------------------------------------------------------------------


def test_one_price_with_every_rate(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        - match: m
          price: {input: 3, output: 15, cached_input: "0.3", cache_write: "3.75", reasoning: 20,
                  audio_input: 40, audio_output: 80, per: 1M, currency: usd, from: 2026-01-01,
                  source: https://example.com, checked: 2026-12-06}
        """,
    )
    entry = entry_of(catalog, "m")
    assert entry.prices is not None
    assert entry.prices.prices == (
        Price(Decimal(3), Decimal(15), PER_1M, "USD", cached_input=Decimal("0.3"), cache_write=Decimal("3.75"),
              reasoning=Decimal(20), audio_input=Decimal(40), audio_output=Decimal(80),
              effective_from=datetime(2026, 1, 1, tzinfo=UTC)),
    )  # fmt: skip
    assert entry.price_sources == (PriceSource("https://example.com", date(2026, 12, 6)),)


def test_a_history_is_read_oldest_first_with_utc_dates(tmp_path: Path) -> None:
    entry = entry_of(load(tmp_path, HISTORY), "corp-chat")
    assert entry.prices is not None
    first, beijing_midnight, december = entry.prices.prices
    assert first.effective_from is None  # holds since always
    assert beijing_midnight.effective_from == datetime(2026, 11, 14, 16, tzinfo=UTC)  # a YAML timestamp with offset
    assert december.effective_from == datetime(2026, 12, 1, tzinfo=UTC)  # an ISO date string: 00:00 UTC
    assert (beijing_midnight.cached_input, beijing_midnight.reasoning) == (Decimal("0.1"), Decimal(12))
    assert december.cached_input is None  # each dated price is complete: nothing carries over
    assert entry.price_sources == (PriceSource("https://example.com/prices", date(2026, 12, 6)), PriceSource(),
                                   PriceSource())  # fmt: skip


def test_tiers_inherit_the_rates_they_leave_out(tmp_path: Path) -> None:
    catalog = load(
        tmp_path,
        """
        - match: m
          price:
            input: "0.8"
            cached_input: "0.16"
            output: "2"
            per: 1M
            currency: CNY
            tiers:
              - {up_to: 128K, input: "0.8"}
              - {up_to: 1M, input: "2.4", cached_input: "0.48", output: "20"}
              - {input: "4.8", output: "48"}
        """,
    )
    price = catalog.price_for("m")
    assert price is not None
    assert price.tiers == (
        PriceTier(131_072, Decimal("0.8"), Decimal(2), cached_input=Decimal("0.16")),
        PriceTier(1_048_576, Decimal("2.4"), Decimal(20), cached_input=Decimal("0.48")),
        PriceTier(None, Decimal("4.8"), Decimal(48), cached_input=Decimal("0.16")),  # the price's own cached rate
    )


@pytest.mark.parametrize(("written", "tokens"), [("32K", 32_768), ("32k", 32_768), ("1M", 1_048_576), (30000, 30_000)])
def test_up_to_forms(tmp_path: Path, written: object, tokens: int) -> None:
    text = f"- match: m\n  price: {{input: 1, output: 1, per: 1M, currency: CNY, tiers: [{{up_to: {written}}}]}}\n"
    price = load(tmp_path, text).price_for("m")
    assert price is not None
    assert price.tiers[0].up_to == tokens


# --- which price and which tier ---------------------------------------------------------------


def test_price_at_a_change_made_at_beijing_midnight(tmp_path: Path) -> None:
    catalog = load(tmp_path, HISTORY)
    change = datetime(2026, 11, 15, tzinfo=BEIJING)
    just_before = change - timedelta(microseconds=1)
    before, at, after = (catalog.price_at("corp-chat", when) for when in (just_before, change, change + timedelta(1)))
    assert before is not None and at is not None and after is not None
    assert (before.input, at.input, after.input) == (Decimal(2), Decimal(1), Decimal(1))
    assert at is after
    # The same moment written in UTC: 16:00 on the 14th.
    assert catalog.price_at("corp-chat", datetime(2026, 11, 14, 16, tzinfo=UTC)) is at
    assert catalog.price_at("corp-chat", datetime(2026, 11, 14, 15, 59, 59, tzinfo=UTC)) is before


def test_a_call_before_the_first_dated_price_is_unpriced(builtin: ModelCatalog) -> None:
    launch = datetime(2025, 2, 9, tzinfo=BEIJING)  # deepseek-chat's first dated price
    assert builtin.price_at("deepseek-chat", launch - timedelta(seconds=1)) is None
    assert builtin.price_at("deepseek-chat", launch) is not None


QWEN_TIERS = """
- match: qwen-long-context
  price:
    input: "0.8"
    cached_input: "0.16"
    output: "2"
    per: 1M
    currency: CNY
    tiers:
      - {up_to: 128K}
      - {up_to: 256K, input: "2.4", cached_input: "0.48", output: "20"}
      - {input: "4.8", cached_input: "0.96", output: "48"}
"""


@pytest.mark.parametrize(
    ("input_tokens", "tier"),
    [(1, 0), (131_072, 0), (131_073, 1), (262_144, 1), (262_145, 2), (1_000_000, 2)],
)
def test_up_to_is_inclusive(tmp_path: Path, input_tokens: int, tier: int) -> None:
    price = load(tmp_path, QWEN_TIERS).price_for("qwen-long-context")
    assert cost_of_tokens(price, TokenCounts(input_tokens, 0)).tier == tier


def test_a_qwen_tiered_call(tmp_path: Path) -> None:
    price = load(tmp_path, QWEN_TIERS).price_for("qwen-long-context")
    # 200,000 input tokens choose tier 1 (131,072 < 200,000 <= 262,144); 150,000 of them are cache hits.
    cost = cost_of_tokens(price, TokenCounts(200_000, 3_000, cache_read=150_000))
    # 50,000 x 2.4 + 150,000 x 0.48 + 3,000 x 20 = 120,000 + 72,000 + 60,000 = 252,000 per 1M tokens
    assert (cost.amount, cost.currency, cost.tier) == (Decimal("0.252"), "CNY", 1)


# --- costs at the built-in prices ---------------------------------------------------------------


def test_a_deepseek_cache_hit_call_across_its_price_changes(builtin: ModelCatalog) -> None:
    tokens = TokenCounts(10_000, 500, cache_read=8_000)
    october_2025 = builtin.price_at("deepseek-chat", datetime(2025, 10, 15, 9, tzinfo=BEIJING))
    # V3.2: 2,000 misses x 2 + 8,000 hits x 0.2 + 500 x 3 = 4,000 + 1,600 + 1,500 = 7,100 CNY per 1M
    assert cost_of_tokens(october_2025, tokens).amount == Decimal("0.0071")
    may_2026 = builtin.price_at("deepseek-chat", datetime(2026, 5, 1, 9, tzinfo=BEIJING))
    cost = cost_of_tokens(may_2026, tokens)
    # V4-Flash after the cache-hit cut: 2,000 x 1 + 8,000 x 0.02 + 500 x 2 = 2,000 + 160 + 1,000 = 3,160
    assert (cost.amount, cost.price_from) == (Decimal("0.00316"), datetime(2026, 4, 26, 12, 15, tzinfo=UTC))
    # The same tokens as if none were cached, in May 2026: 10,000 x 1 + 500 x 2 = 11,000 per 1M.
    assert cost_of_tokens(may_2026, TokenCounts(10_000, 500)).amount == Decimal("0.011")


def test_a_reasoning_call_at_o3_before_and_after_its_price_cut(builtin: ModelCatalog) -> None:
    # 5,000 output tokens, 4,000 of them reasoning: OpenAI bills reasoning as output.
    tokens = TokenCounts(1_000, 5_000, reasoning=4_000)
    before = builtin.price_at("o3", datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    after = builtin.price_at("o3", datetime(2025, 6, 10, tzinfo=UTC))
    # 1,000 x 10 + 1,000 x 40 + 4,000 x 40 = 210,000 USD per 1M
    assert cost_of_tokens(before, tokens).amount == Decimal("0.21")
    # 1,000 x 2 + 1,000 x 8 + 4,000 x 8 = 42,000
    assert cost_of_tokens(after, tokens).amount == Decimal("0.042")


def test_a_reasoning_rate_of_its_own(tmp_path: Path) -> None:
    price = load(tmp_path, HISTORY).price_at("corp-chat", datetime(2026, 11, 20, tzinfo=UTC))
    # 2,000 in (500 cached) and 1,000 out (700 reasoning): 1,500 x 1 + 500 x 0.1 + 300 x 4 + 700 x 12
    # = 1,500 + 50 + 1,200 + 8,400 = 11,150 CNY per 1M
    tokens = TokenCounts(2_000, 1_000, cache_read=500, reasoning=700)
    assert cost_of_tokens(price, tokens).amount == Decimal("0.01115")


def test_every_builtin_schedule_parses_dated_ascending_with_provenance(builtin: ModelCatalog) -> None:
    priced = [entry for entry in builtin.entries if entry.prices is not None]
    assert len(priced) > 40
    for entry in priced:
        assert isinstance(entry, ModelEntry)
        assert entry.prices is not None
        prices = entry.prices.prices
        assert len(entry.price_sources) == len(prices), entry.pattern
        dates = [price.effective_from for price in prices if price.effective_from is not None]
        assert all(earlier < later for earlier, later in itertools.pairwise(dates)), entry.pattern
        assert all(moment.utcoffset() == timedelta(0) for moment in dates), entry.pattern
        if not prices[-1].virtual:  # a list price says where it was checked, and when
            assert all(source.source and source.checked for source in entry.price_sources), entry.pattern
    deepseek = builtin.lookup("deepseek-chat")
    assert deepseek is not None and deepseek.prices is not None
    assert len(deepseek.prices.prices) == 4


# --- errors ---------------------------------------------------------------------------------

_ONE = "{input: 1, output: 1, per: 1M, currency: CNY"


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (
            f"{_ONE}, tiers: [{{up_to: 10}}, {{up_to: 5}}]}}",
            "price.tiers[1].up_to (5) must be more than tiers[0].up_to (10): list the tiers smallest first",
        ),
        (
            f"{_ONE}, tiers: [{{up_to: 10}}, {{up_to: 10}}]}}",
            "price.tiers[1].up_to (10) must be more than tiers[0].up_to (10): list the tiers smallest first",
        ),
        (
            f"[{_ONE}}}, {{from: 2026-01-01, {_ONE[1:]}, tiers: [{{}}, {{up_to: 5}}]}}]",
            "price[1].tiers[0].up_to is missing: only the last tier may leave it out",
        ),
        (f"{_ONE}, tiers: []}}", "price.tiers must list at least one tier, or be left out"),
        (
            f"{_ONE}, tiers: [{{up_to: 32KB}}]}}",
            'price.tiers[0].up_to must be a number of input tokens such as 32768 or "32K" (K = 1,024 and '
            'M = 1,048,576 tokens), got a string "32KB"',
        ),
        (
            f"{_ONE}, tiers: [{{up_to: 0}}]}}",
            'price.tiers[0].up_to must be a number of input tokens such as 32768 or "32K"',
        ),
        (
            f"{_ONE}, tiers: [5]}}",
            "price.tiers[0] must be a mapping such as {up_to: 32K, input: ..., output: ...}, got a number 5",
        ),
        (
            f"[{{from: 2026-01-01, {_ONE[1:]}}}, {{from: 2026-01-01T08:00:00+08:00, {_ONE[1:]}}}]",
            "price[1].from (2026-01-01T00:00:00+00:00) is the same moment as price[0].from "
            "(2026-01-01T00:00:00+00:00): list the prices oldest first, each from its own date",
        ),
        (
            f"[{{from: 2026-02-01, {_ONE[1:]}}}, {{from: 2026-01-01, {_ONE[1:]}}}]",
            "price[1].from (2026-01-01T00:00:00+00:00) is before price[0].from (2026-02-01T00:00:00+00:00): "
            "list the prices oldest first, each from its own date",
        ),
        (
            f"[{_ONE}}}, {_ONE}}}]",
            "price[1].from is required: only the first price may leave it out (it holds always)",
        ),
        ("[]", "price must list at least one price (oldest first), or be one mapping"),
        ("[5]", "price[0] must be a mapping with input, output, per and currency, got a number"),
        (
            "5",
            "price must be a mapping with input, output, per and currency, or a list of such prices (oldest first, "
            "every one after the first with a from date), got a number",
        ),
        (
            f"{_ONE}, cache_read: 1}}",
            "unknown field 'price.cache_read' (did you mean \"cached_input\"?); allowed: input, output, per, currency, "
            "virtual, cached_input, cache_write, reasoning, audio_input, audio_output, tiers, from, source, checked",
        ),
        (f"{_ONE}, reasoning_tokens: 1}}", "unknown field 'price.reasoning_tokens' (did you mean \"reasoning\"?)"),
        (f"{_ONE}, tiers: [{{upto: 5}}]}}", "unknown field 'price.tiers[0].upto' (did you mean \"up_to\"?)"),
        (
            f"{_ONE}, cached_input: -1}}",
            'price.cached_input must be a non-negative number such as "0.5" or 0.5, got a number -1',
        ),
        (
            f"{_ONE}, audio_output: lots}}",
            'price.audio_output must be a non-negative number such as "0.5" or 0.5, got a string "lots"',
        ),
        (
            f"[{_ONE}}}, {{from: 2026-01-01, {_ONE[1:]}, tiers: [{{reasoning: .nan}}]}}]",
            "price[1].tiers[0].reasoning must be a non-negative number",
        ),
        (
            f"{_ONE}, from: soon}}",
            "price.from must be a date such as 2026-11-01 (taken as 00:00 UTC) or a time with its UTC offset such as "
            '2026-11-15T00:00:00+08:00, got a string "soon"',
        ),
        (
            f"{_ONE}, from: 2026-11-15 00:00:00}}",
            "price.from must be a date such as 2026-11-01 (taken as 00:00 UTC) or a time with its UTC offset such as "
            "2026-11-15T00:00:00+08:00, got a time without UTC offset 2026-11-15T00:00:00",
        ),
        (f"{_ONE}, from: 20261115}}", "price.from must be a date such as 2026-11-01"),
        (
            f"{_ONE}, checked: 2026-12-06T10:00:00Z}}",
            "price.checked must be the date the price was last checked against its source, such as 2026-12-06, "
            "got a time 2026-12-06T10:00:00+00:00",
        ),
        (
            f"{_ONE}, source: ' '}}",
            "price.source must say where the price comes from, such as the provider's price page URL, got a string",
        ),
        (
            f"[{_ONE}}}, {{from: 2026-01-01, input: 1, output: 1, per: 1M}}]",
            'price[1].currency must be a currency code such as "USD" or "CNY", got None',
        ),
    ],
)
def test_price_errors_name_the_field_and_the_fix(tmp_path: Path, price: str, message: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(f"- match: m\n  price: {price}\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        ModelCatalog.load(path)
    assert str(info.value).startswith(f"{path} entry 1 (match 'm'): {message}"), str(info.value)


# --- count --list-models ---------------------------------------------------------------------


def test_list_models_shows_the_schedule_tiers_and_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(HISTORY) + textwrap.dedent(QWEN_TIERS), encoding="utf-8")
    assert main(["count", "--list-models", "--models", str(path)]) == 0
    lines = {line["match"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    chat = lines["corp-chat"]
    assert chat["price"] == {"input": "1", "output": "4", "per": "1M", "currency": "CNY", "virtual": False,
                             "from": "2026-12-01T00:00:00+00:00"}  # fmt: skip
    assert [price.get("from") for price in chat["prices"]] == [
        None, "2026-11-14T16:00:00+00:00", "2026-12-01T00:00:00+00:00"]  # fmt: skip
    assert chat["prices"][0] == {"input": "2", "output": "8", "cached_input": "0.5", "per": "1M", "currency": "CNY",
                                 "virtual": False, "source": "https://example.com/prices",
                                 "checked": "2026-12-06"}  # fmt: skip
    assert chat["prices"][1]["reasoning"] == "12"
    tiered = lines["qwen-long-context"]
    assert "prices" not in tiered  # one price: it is the schedule
    assert tiered["price"]["tiers"] == [
        {"up_to": 131072, "input": "0.8", "output": "2", "cached_input": "0.16"},
        {"up_to": 262144, "input": "2.4", "output": "20", "cached_input": "0.48"},
        {"up_to": None, "input": "4.8", "output": "48", "cached_input": "0.96"},
    ]
    builtin_chat = lines["deepseek-chat"]
    assert builtin_chat["price"]["from"] == "2026-04-26T12:15:00+00:00"
    assert len(builtin_chat["prices"]) == 4


def test_list_models_shows_a_price_not_yet_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(f"- match: later\n  price: {_ONE}, from: 2999-01-01}}\n", encoding="utf-8")
    assert main(["count", "--list-models", "--models", str(path)]) == 0
    later = json.loads(capsys.readouterr().out.splitlines()[0])
    assert later["price"] is None  # nothing holds now
    assert [price["from"] for price in later["prices"]] == ["2999-01-01T00:00:00+00:00"]
