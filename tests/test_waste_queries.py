"""The waste report's queries on chDB, over spans put through the real OTLP ingest (tests/support/waste_calls.py),
each finding equal to the values worked out by hand from NOVEMBER_CALLS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from waste_calls import H1, HOSTILE_USER, LARGE, POLICY_ROUTING, SMALL, UNKNOWN, WasteCall, store_waste_calls

from tokenmeter.enforcer.policy import load_policy
from tokenmeter.pricing import PER_1M, Price
from tokenmeter.store.waste_queries import read_routing_replay, read_waste
from tokenmeter.waste.findings import (
    CacheHits,
    CacheReplay,
    ContextShare,
    HeavyUser,
    IncompleteStreams,
    RepeatedPrompt,
    Retries,
)
from tokenmeter.waste.routing_replay import ReplayPolicy, RuleReplay
from tokenmeter.waste.spend import Money, Spend
from tokenmeter.waste.waste_query import WasteQuery
from tokenmeter.waste.waste_report import WasteReport

PRICES = {
    SMALL: Price(Decimal("0.5"), Decimal("1"), PER_1M, "CNY"),
    LARGE: Price(Decimal("2"), Decimal("8"), PER_1M, "USD"),
}


def cny(amount: str) -> tuple[Money, ...]:
    return (Money("CNY", False, Decimal(amount)),)


def usd(amount: str) -> tuple[Money, ...]:
    return (Money("USD", False, Decimal(amount)),)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path_factory.mktemp('waste') / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        store_waste_calls(client)
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> ReplayPolicy:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text("budgets: []\n" + POLICY_ROUTING, encoding="utf-8")
    routing = load_policy(path).routing
    assert routing is not None
    return ReplayPolicy(routing, str(path), PRICES.get)


@pytest.fixture(scope="module")
def november(store: Any) -> WasteReport:
    return read_waste(store, WasteQuery.parse(period="2026-11"), None, "no policy")


def test_repeated_prompts_ranked_by_calls_times_cost(november: WasteReport) -> None:
    """Seen twice or more per (hash, app, model); H1 in legal-qa and H3 once only. Rank: 5 x 2.5, 2 x 2, 2 x 1, 0.
    Not counted: the cache's hits, the refused call, the embedding, October's call."""
    assert november.repeated_prompts == (
        RepeatedPrompt(H1, "kb", SMALL, 2, Spend(5, 5000, 500, cny("2.5"))),
        RepeatedPrompt("H2", "kb", LARGE, 1, Spend(2, 6000, 400, usd("2"))),
        RepeatedPrompt("H5", "kb", SMALL, 1, Spend(2, 2000, 200, cny("1"))),
        RepeatedPrompt("H4", "kb", UNKNOWN, 1, Spend(3, 2400, 240, (), 3)),  # unpriced: cost unknown, ranked last
    )
    assert [row.rank for row in november.repeated_prompts] == [Decimal("12.5"), 4, 2, 0]


def test_users_far_above_their_departments_input_per_call(november: WasteReport) -> None:
    """sales: 27000 input tokens over 26 calls; heavy 4000 per call = 3.85x; few is above too, with one call."""
    [heavy] = november.heavy_users
    assert heavy == HeavyUser("heavy", "sales", 5, 20000, 26, 27000)
    assert heavy.ratio == pytest.approx(4000 / (27000 / 26))


def test_context_share_per_app_and_route(november: WasteReport) -> None:
    """Over calls that report both lengths: 1 - questions / prompts (5 x 100 + 2 x 50 of 5 x 1000 + 2 x 900)."""
    assert november.context == (
        ContextShare("kb", "/chat/kb_chat", 7, 6800, 600, 11000),
        ContextShare("legal-qa", "/chat/chat", 1, 400, 200, 1000),
        ContextShare("kb", "", 1, 100, 50, 100),
    )
    assert [round(row.context_share, 6) for row in november.context] == [round(1 - 600 / 6800, 6), 0.5, 0.5]


def test_streams_never_read_to_the_end(november: WasteReport) -> None:
    assert november.incomplete_streams == (
        IncompleteStreams("kb", "carol", 2, Spend(1, 3000, 200, usd("1"))),
        IncompleteStreams("kb", "dave", 3, Spend(1, 800, 80, (), 1)),
    )
    assert november.incomplete_total == Spend(2, 3800, 280, usd("1"), 1)


def test_retries_within_the_window(november: WasteReport, store: Any) -> None:
    """alice at +30 s, dave at +60 s, the hostile id at exactly 120 s; alice's refused call at +10 s and her cache
    hits at +100 s and +200 s are not retries."""
    assert november.retries == (
        Retries("kb", "alice", Spend(1, 1000, 100, cny("0.5"))),
        Retries("kb", "dave", Spend(1, 800, 80, (), 1)),
        Retries("kb", HOSTILE_USER, Spend(1, 1000, 100, cny("0.5"))),
    )
    assert november.retries_total == Spend(3, 2800, 280, cny("1"), 1)
    shorter = read_waste(store, WasteQuery.parse(period="2026-11", retry_window="119"), None)
    assert [(r.user, r.repeats.calls) for r in shorter.retries] == [("alice", 1), ("dave", 1)]


def test_cache_replay_by_hash_and_model_within_the_ttl(november: WasteReport) -> None:
    """qwen-7b H1 at 0 (miss), 30, 1000, 2000 (legal-qa), 4000 (expired: a miss), 5000; H5 at 10000, 10120; H3 once.
    mystery-model H4 at 0, 60, 7000 (expired). deepseek-chat H2 two hours apart."""
    assert november.cache == (
        CacheReplay(SMALL, 9, 26, Spend(5, 5000, 500, cny("2.5"))),
        CacheReplay(UNKNOWN, 3, 0, Spend(1, 800, 80, (), 1)),
        CacheReplay(LARGE, 2, 1, Spend()),
    )
    total = november.cache_total
    assert (total.calls, total.calls_without_hash, total.hits) == (14, 27, Spend(6, 5800, 580, cny("2.5"), 1))
    assert total.hit_rate == pytest.approx(6 / 14)
    assert november.cache_hits == CacheHits(2, 2000, 200, cny("1"))  # what the answer cache really answered


def test_a_longer_ttl_keeps_answers_longer(store: Any) -> None:
    report = read_waste(store, WasteQuery.parse(period="2026-11", cache_ttl="7200"), None)
    assert {row.model: row.hits.calls for row in report.cache} == {SMALL: 6, UNKNOWN: 2, LARGE: 0}


def test_routing_replay_per_rule(store: Any, policy: ReplayPolicy) -> None:
    """carol's two lookups: short-lookup sends them from deepseek-chat to qwen-7b; before 2 x (3000 x 2 + 200 x 8)
    / 1M USD, after 2 x (3000 x 0.5 + 200 x 1) / 1M CNY. legal-stay holds for grace's call (the tier it asked:
    allowed for a critical app), which does not move. brownout never holds (no budget known); long comes after."""
    replay = read_routing_replay(store, WasteQuery.parse(period="2026-11"), policy)
    assert (replay.calls, replay.calls_with_intent, replay.calls_without_features, replay.calls_in_experiments) == (
        8, 2, 32, 1)  # fmt: skip
    assert replay.rules == (
        RuleReplay("short-lookup", "tier small", 2, 2, usd("0.0152"), cny("0.0034")),
        RuleReplay("brownout", "down 1", 0, 0),
        RuleReplay("legal-stay", "tier small", 1, 0),
        RuleReplay("long", "tier large", 0, 0),
    )
    assert replay.saved == (Money("CNY", False, Decimal("-0.0034")), Money("USD", False, Decimal("0.0152")))


def test_unpriced_models_are_moved_without_a_cost(store: Any, policy: ReplayPolicy) -> None:
    without_small = ReplayPolicy(policy.routing, policy.label, {LARGE: PRICES[LARGE]}.get)
    [lookup, *_] = read_routing_replay(store, WasteQuery.parse(period="2026-11"), without_small).rules
    assert lookup == RuleReplay("short-lookup", "tier small", 2, 2, (), (), unpriced_moved=2)


def test_the_top_rows_and_totals_over_all(store: Any) -> None:
    report = read_waste(store, WasteQuery.parse(period="2026-11", top="1"), None)
    assert [row.prompt_hash for row in report.repeated_prompts] == [H1]
    assert [row.user for row in report.retries] == ["alice"]
    assert report.retries_total.calls == 3  # all retries, not only the rows shown


def test_hostile_values_are_parameters(store: Any) -> None:
    """Quotes in every id (in December, apart from November's calls; chDB opens one directory per process)."""
    quote = "x' OR '1'='1"
    december = [WasteCall(quote, 0, quote, quote, department=quote, app=quote, moment=datetime(2026, 12, 2, 1, 0, s,
                                                                                              tzinfo=UTC))
                for s in (0, 5)]  # fmt: skip
    store_waste_calls(store, december)
    report = read_waste(store, WasteQuery.parse(period="2026-12"), None)
    assert [(r.prompt_hash, r.app, r.model) for r in report.repeated_prompts] == [(quote, quote, quote)]
    assert [(r.app, r.user) for r in report.retries] == [(quote, quote)]
    assert [row.model for row in report.cache] == [quote]


def test_an_empty_period(store: Any, policy: ReplayPolicy) -> None:
    report = read_waste(store, WasteQuery.parse(period="2026-09"), policy)
    assert report.repeated_prompts == report.heavy_users == report.context == report.cache == ()
    assert report.incomplete_streams == report.retries == ()
    assert report.incomplete_total == report.retries_total == Spend()
    assert report.cache_hits == CacheHits()
    assert report.cache_total.hit_rate == 0
    assert report.routing is not None and report.routing.calls == 0
    assert [rule.matched for rule in report.routing.rules] == [0, 0, 0, 0]


def test_a_period_in_a_time_zone(store: Any) -> None:
    """November in Asia/Shanghai starts 8 hours earlier: October's last call (23:59:59 UTC) falls in it."""
    report = read_waste(store, WasteQuery.parse(period="2026-11", timezone="Asia/Shanghai"), None)
    assert report.repeated_prompts[0].spend.calls == 6


def test_the_document_reads_back(november: WasteReport, store: Any, policy: ReplayPolicy) -> None:
    with_routing = read_waste(store, WasteQuery.parse(period="2026-11"), policy)
    for report in (november, with_routing):
        assert WasteReport.from_dict(report.to_dict()) == report
    assert november.to_dict()["routing_note"] == "no policy"
    assert with_routing.to_dict()["routing"]["saved"] == [
        {"currency": "CNY", "virtual": False, "amount": "-0.0034"},
        {"currency": "USD", "virtual": False, "amount": "0.0152"},
    ]
    with pytest.raises(ValueError, match="not a waste report"):
        WasteReport.from_dict({"period": {}})
