"""Every token type the servers report: read from each usage shape, on the span, in the counters, priced.

The real openai SDK (sync, async, streamed and not) against the local OpenAI-compatible server made to
report OpenAI's, DeepSeek's and DashScope's usage shapes; metering on a catalog built here with a tiered
price and a price change; expected costs computed by hand, to the last digit.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk
from openai_server import OpenAICompatibleServer, dashscope_usage, deepseek_usage, openai_usage
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.catalog.entry import ModelEntry
from tokenmeter.instrumentation.billing import BillableCall, LocalCountPolicy, bill
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.metering import Metering, MeteringOptions
from tokenmeter.instrumentation.openai_patch import RequestOptions, patch, unpatch
from tokenmeter.instrumentation.openai_payload import ServerUsage, StreamAccumulator, server_usage
from tokenmeter.instrumentation.telemetry_outputs import TelemetryOutputs
from tokenmeter.pricing import PER_1M, Price, PriceSchedule, PriceTier, TokenCounts
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "rag-model"
MESSAGES = [{"role": "system", "content": "长长的系统提示……"}, {"role": "user", "content": "缓存命中了吗？"}]
SINCE_2020 = datetime(2020, 1, 1, tzinfo=UTC)
FALLBACK = LocalCountPolicy("fallback", 0.0)
# Per 1M tokens, CNY. Up to 1,000 input tokens the cheap tier, above it the long-context tier; reasoning has a
# rate of its own only in the long tier (in the short one it costs output).
PRICE_A = Price(
    input=Decimal("2"), output=Decimal("8"), per=PER_1M, currency="CNY", effective_from=SINCE_2020,
    tiers=(
        PriceTier(1000, input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("0.5"),
                  cache_write=Decimal("2.5")),
        PriceTier(None, input=Decimal("4"), output=Decimal("16"), cached_input=Decimal("1"),
                  cache_write=Decimal("5"), reasoning=Decimal("12")),
    ),
)  # fmt: skip
# The price after the change: one rate for every length, cache reads at a tenth, no reasoning rate.
PRICE_B_RATES = {"input": Decimal("3"), "output": Decimal("9"), "cached_input": Decimal("0.3"),
                 "cache_write": Decimal("3.75")}  # fmt: skip


def catalog(change_at: datetime | None = None) -> ModelCatalog:
    """MODEL at PRICE_A since 2020, and from ``change_at`` (if given) at PRICE_B."""
    prices = [PRICE_A]
    if change_at is not None:
        prices.append(Price(per=PER_1M, currency="CNY", effective_from=change_at, **PRICE_B_RATES))
    entry = ModelEntry(MODEL, "test", None, None, PriceSchedule(tuple(prices)), None)
    return ModelCatalog([entry])


def per_million(*parts: tuple[int, str]) -> Decimal:
    """Tokens times rates (decimal strings) per 1M tokens, by hand."""
    return sum((Decimal(tokens) * Decimal(rate) for tokens, rate in parts), Decimal(0)) / Decimal(1_000_000)


# --- reading the usage shapes ---------------------------------------------------------------------------------


def usage_of(usage: dict[str, Any], as_sdk_object: bool) -> ServerUsage | None:
    block = {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300, **usage}
    return server_usage({"usage": CompletionUsage.model_validate(block) if as_sdk_object else block})


@pytest.mark.parametrize("as_sdk_object", [True, False])
def test_each_servers_usage_shape_is_read_into_its_parts(as_sdk_object: bool) -> None:
    read = usage_of(openai_usage(1536, 64, audio_input=0, audio_output=0, image_input=0), as_sdk_object)
    assert read == ServerUsage(2000, 300, cache_read=1536, reasoning=64, audio_input=0, audio_output=0, image_input=0)
    assert usage_of(openai_usage(0, cache_write=1800), as_sdk_object) == ServerUsage(2000, 300, 0, 1800)
    # DeepSeek: the hit is the cache read; with only the miss, the read is the rest of the prompt.
    assert usage_of(deepseek_usage(1500, 500, reasoning=120), as_sdk_object) == ServerUsage(2000, 300, 1500,
                                                                                            reasoning=120)  # fmt: skip
    assert usage_of(deepseek_usage(None, 700), as_sdk_object) == ServerUsage(2000, 300, cache_read=1300)
    # DashScope's explicit cache: a write, then reads.
    assert usage_of(dashscope_usage(0, 1024), as_sdk_object) == ServerUsage(2000, 300, 0, 1024)
    assert usage_of(dashscope_usage(1024, 0), as_sdk_object) == ServerUsage(2000, 300, 1024)
    # No details at all: no parts, as before.
    assert usage_of({}, as_sdk_object) == ServerUsage(2000, 300)


@pytest.mark.parametrize("as_sdk_object", [True, False])
def test_anthropic_style_names_are_read_only_beside_openais_details(as_sdk_object: bool) -> None:
    anthropic_names = {"cache_read_input_tokens": 900, "cache_creation_input_tokens": 300}
    # Alone they may be Anthropic's, whose input excludes them: nothing is read (the prompt is billed as input).
    assert usage_of(anthropic_names, as_sdk_object) == ServerUsage(2000, 300)
    # Beside prompt_tokens_details (LiteLLM's shape, whose prompt_tokens includes them) they fill what is missing.
    beside = {**anthropic_names, "prompt_tokens_details": {"audio_tokens": 0}}
    assert usage_of(beside, as_sdk_object) == ServerUsage(2000, 300, 900, 300, audio_input=0)
    beside_cached = {**anthropic_names, "prompt_tokens_details": {"cached_tokens": 800}}
    assert usage_of(beside_cached, as_sdk_object) == ServerUsage(2000, 300, 800, 300)
    # A proxy that names the reads in the details counts the writes in cached_tokens too: its own name wins.
    proxy = {"prompt_tokens_details": {"cached_tokens": 1000, "cache_read_input_tokens": 0,
                                       "cache_creation_input_tokens": 1000}}  # fmt: skip
    assert usage_of(proxy, as_sdk_object) == ServerUsage(2000, 300, 0, 1000)


def test_odd_values_are_not_parts_and_parts_are_cut_to_their_totals() -> None:
    odd = {"prompt_tokens_details": {"cached_tokens": True, "audio_tokens": "5", "image_tokens": 2.5},
           "completion_tokens_details": {"reasoning_tokens": 12.0}}  # fmt: skip
    assert usage_of(odd, as_sdk_object=False) == ServerUsage(2000, 300, reasoning=12)
    too_many = openai_usage(1800, 400, audio_input=500, image_input=9000, cache_write=700)
    assert usage_of(too_many, as_sdk_object=False) == ServerUsage(2000, 300, 1800, 200, 300, 0, image_input=2000)
    assert usage_of(openai_usage(-5, -1), as_sdk_object=False) == ServerUsage(2000, 300, 0, reasoning=0)


def test_the_final_stream_chunk_carries_the_parts() -> None:
    accumulator = StreamAccumulator()
    chunk = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    accumulator.observe(ChatCompletionChunk.model_validate({**chunk, "choices": [
        {"index": 0, "delta": {"content": "答"}, "finish_reason": "stop"}]}))  # fmt: skip
    usage = {"prompt_tokens": 800, "completion_tokens": 90, "total_tokens": 890, **deepseek_usage(600, 200, 30)}
    accumulator.observe(ChatCompletionChunk.model_validate({**chunk, "choices": [], "usage": usage}))
    assert accumulator.usage == ServerUsage(800, 90, cache_read=600, reasoning=30)


# --- billing by type, tier and date ---------------------------------------------------------------------------


def facts(usage: ServerUsage | None, started_at: datetime | None) -> BillableCall:
    return BillableCall("chat", MODEL, None, MESSAGES, ("答",), usage, True, 0, started_at)


def test_a_call_is_priced_by_type_at_its_tier_with_the_price_valid_when_it_started() -> None:
    change = datetime(2026, 11, 15, tzinfo=UTC)
    prices, registry = catalog(change), TokenizerRegistry(catalog(change))
    usage = ServerUsage(2000, 300, cache_read=1536, reasoning=64)
    before = bill(facts(usage, datetime(2026, 11, 14, 23, 59, 59, tzinfo=UTC)), prices, registry, FALLBACK)
    assert before.tokens == TokenCounts(2000, 300, cache_read=1536, reasoning=64)
    assert before.cost is not None and (before.cost.tier, before.cost.price_from) == (1, SINCE_2020)
    assert before.cost.amount == per_million((464, "4"), (1536, "1"), (236, "16"), (64, "12")) == Decimal("0.007936")
    at = bill(facts(usage, change), prices, registry, FALLBACK)  # the new price holds from its first instant
    assert at.cost is not None and (at.cost.tier, at.cost.price_from) == (None, change)
    assert at.cost.amount == per_million((464, "3"), (1536, "0.3"), (236, "9"), (64, "9")) == Decimal("0.0045528")
    short = bill(facts(ServerUsage(800, 40, cache_read=500), change.replace(year=2025)), prices, registry, FALLBACK)
    assert short.cost is not None and short.cost.tier == 0
    assert short.cost.amount == per_million((300, "2"), (500, "0.5"), (40, "8")) == Decimal("0.00117")
    too_early = bill(facts(usage, datetime(2019, 12, 31, tzinfo=UTC)), prices, registry, FALLBACK)
    assert too_early.cost is not None and too_early.cost.unpriced and too_early.cost.amount is None


def test_local_counts_have_only_input_and_output() -> None:
    record = bill(facts(None, datetime(2026, 1, 1, tzinfo=UTC)), catalog(), TokenizerRegistry(catalog()), FALLBACK)
    assert record.reported is None
    assert record.tokens == TokenCounts(record.input_tokens, record.output_tokens)
    assert record.cost is not None and record.cost.amount is not None


# --- through the SDK ------------------------------------------------------------------------------------------


@contextmanager
def metered(prices: ModelCatalog, telemetry: Telemetry,
            price_clock: Callable[[], datetime] | None = None) -> Iterator[BackgroundFinalizer]:  # fmt: skip
    """The OpenAI SDK metered on ``prices`` (as `instrument()` does, with a catalog built here)."""
    outputs = TelemetryOutputs.open(Settings(usage_flush_seconds=0), telemetry.tracer_provider,
                                    telemetry.meter_provider, "test")  # fmt: skip
    finalizer = BackgroundFinalizer()
    metering = Metering(tracer=outputs.tracer, instruments=outputs.instruments, catalog=prices,
                        registry=TokenizerRegistry(prices), hasher=ContentHasher(b"test-key"), finalizer=finalizer,
                        options=MeteringOptions(capture_content=False, local_count=FALLBACK,
                                                price_clock=price_clock))  # fmt: skip
    targets = patch(metering, RequestOptions(stream_usage="off", propagate="never"))
    try:
        yield finalizer
    finally:
        unpatch(targets)
        assert finalizer.flush(5)
        outputs.shutdown()


def chat(server: OpenAICompatibleServer, *, max_tokens: int, stream: bool = False, is_async: bool = False) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        kwargs.update(stream=True, stream_options={"include_usage": True})
    if is_async:
        asyncio.run(_async_chat(server, kwargs))
        return
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    response = client.chat.completions.create(**kwargs)
    if stream:
        for _chunk in response:
            pass


async def _async_chat(server: OpenAICompatibleServer, kwargs: dict[str, Any]) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    response = await client.chat.completions.create(**kwargs)
    if kwargs.get("stream"):
        async for _chunk in response:
            pass
    await client.close()


def token_points(telemetry: Telemetry) -> dict[tuple[str, str | None], int]:
    """The usage token counter by (token type, its cache or phase part; None: no split)."""
    totals: dict[tuple[str, str | None], int] = {}
    for attributes, value in telemetry.points(semconv.METRIC_USAGE_TOKENS):
        part = attributes.get(semconv.GEN_AI_TOKEN_CACHE, attributes.get(semconv.GEN_AI_TOKEN_PHASE))
        key = (attributes[semconv.GEN_AI_TOKEN_TYPE], part)
        totals[key] = totals.get(key, 0) + value
    return totals


def cost_units(telemetry: Telemetry) -> int:
    return sum(value for _, value in telemetry.points(semconv.METRIC_USAGE_COST))


USAGE_PARTS = (
    semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    semconv.GEN_AI_USAGE_AUDIO_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS,
    semconv.GEN_AI_USAGE_IMAGE_INPUT_TOKENS,
)


def span_usage(telemetry: Telemetry) -> dict[str, Any]:
    (span,) = telemetry.spans()
    names = (semconv.GEN_AI_USAGE_INPUT_TOKENS, semconv.GEN_AI_USAGE_OUTPUT_TOKENS, *USAGE_PARTS,
             semconv.TM_COST, semconv.TM_PRICE_FROM, semconv.TM_PRICE_TIER)  # fmt: skip
    return {name: span.attributes[name] for name in names if name in span.attributes}


def test_openai_details_sync_cached_and_reasoning_tokens(openai_server: OpenAICompatibleServer) -> None:
    openai_server.state.usage_fields = {"prompt_tokens": 2000, **openai_usage(1536, 64, audio_input=0, audio_output=0,
                                                                              image_input=0)}  # fmt: skip
    telemetry = make_telemetry()
    with metered(catalog(), telemetry):
        chat(openai_server, max_tokens=300)
    assert span_usage(telemetry) == {
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 2000, semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 300,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 1536, semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 64,
        semconv.GEN_AI_USAGE_AUDIO_INPUT_TOKENS: 0, semconv.GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS: 0,
        semconv.GEN_AI_USAGE_IMAGE_INPUT_TOKENS: 0,
        semconv.TM_COST: "0.007936", semconv.TM_PRICE_FROM: "2020-01-01T00:00:00+00:00", semconv.TM_PRICE_TIER: 1,
    }  # fmt: skip
    assert token_points(telemetry) == {("input", "none"): 464, ("input", "read"): 1536,
                                       ("output", "response"): 236, ("output", "reasoning"): 64}  # fmt: skip
    assert cost_units(telemetry) == 7_936_000  # 0.007936 CNY in billionths, one amount for the call
    assert [value for _, value in telemetry.points(semconv.METRIC_TOKEN_USAGE)] == [2000, 300]  # histogram: whole


def test_deepseek_cache_hits_async_without_a_reasoning_split(openai_server: OpenAICompatibleServer) -> None:
    openai_server.state.usage_fields = {"prompt_tokens": 800, **deepseek_usage(None, 300)}
    telemetry = make_telemetry()
    with metered(catalog(), telemetry):
        chat(openai_server, max_tokens=40, is_async=True)
    assert span_usage(telemetry) == {
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 800, semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 40,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 500,
        semconv.TM_COST: "0.00117", semconv.TM_PRICE_FROM: "2020-01-01T00:00:00+00:00", semconv.TM_PRICE_TIER: 0,
    }  # fmt: skip
    # The output had no reported split: one point without a phase, as before.
    assert token_points(telemetry) == {("input", "none"): 300, ("input", "read"): 500, ("output", None): 40}
    assert cost_units(telemetry) == 1_170_000


def test_dashscope_cache_write_streamed(openai_server: OpenAICompatibleServer) -> None:
    openai_server.state.usage_fields = {"prompt_tokens": 1200, **dashscope_usage(0, 1024)}
    telemetry = make_telemetry()
    with metered(catalog(), telemetry):
        chat(openai_server, max_tokens=50, stream=True)
    expected = per_million((176, "4"), (1024, "5"), (50, "16"))
    assert expected == Decimal("0.006624")
    assert span_usage(telemetry) == {
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 1200, semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 50,
        semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 0, semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: 1024,
        semconv.TM_COST: str(expected), semconv.TM_PRICE_FROM: "2020-01-01T00:00:00+00:00", semconv.TM_PRICE_TIER: 1,
    }  # fmt: skip
    assert token_points(telemetry) == {("input", "none"): 176, ("input", "creation"): 1024, ("output", None): 50}
    assert cost_units(telemetry) == 6_624_000


def test_deepseek_reasoner_async_stream(openai_server: OpenAICompatibleServer) -> None:
    openai_server.state.usage_fields = {"prompt_tokens": 800, **deepseek_usage(600, 200, reasoning=30)}
    telemetry = make_telemetry()
    with metered(catalog(), telemetry):
        chat(openai_server, max_tokens=90, stream=True, is_async=True)
    expected = per_million((200, "2"), (600, "0.5"), (60, "8"), (30, "8"))  # the short tier bills reasoning as output
    assert expected == Decimal("0.00142")
    usage = span_usage(telemetry)
    assert usage[semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 600
    assert usage[semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 30
    assert usage[semconv.TM_COST] == str(expected)
    assert token_points(telemetry) == {("input", "none"): 200, ("input", "read"): 600,
                                       ("output", "response"): 60, ("output", "reasoning"): 30}  # fmt: skip


def test_a_price_change_between_two_calls_is_not_retroactive(openai_server: OpenAICompatibleServer) -> None:
    """The same call before and after the catalog's price change (the new catalog is loaded as at a restart)."""
    openai_server.state.usage_fields = {"prompt_tokens": 2000, **openai_usage(1536, 64)}
    before, after = make_telemetry(), make_telemetry()
    with metered(catalog(change_at=datetime(2100, 1, 1, tzinfo=UTC)), before):  # announced, not yet valid
        chat(openai_server, max_tokens=300)
    change = datetime.now(UTC)  # between the two calls
    with metered(catalog(change_at=change), after):
        chat(openai_server, max_tokens=300)
    assert span_usage(before)[semconv.TM_COST] == "0.007936"
    assert span_usage(after)[semconv.TM_COST] == "0.0045528"
    assert span_usage(after)[semconv.TM_PRICE_FROM] == change.isoformat()
    assert datetime.fromisoformat(str(span_usage(after)[semconv.TM_PRICE_FROM])) == change  # read back exactly
    assert semconv.TM_PRICE_TIER not in span_usage(after)  # the new price has no tiers
    assert (cost_units(before), cost_units(after)) == (7_936_000, 4_552_800)


def test_a_backfill_prices_its_calls_at_the_time_they_stand_for(openai_server: OpenAICompatibleServer) -> None:
    """With a price clock (the demo's history of past days), a call made now costs the price valid then."""
    openai_server.state.usage_fields = {"prompt_tokens": 2000, **openai_usage(1536, 64)}
    change = datetime(2026, 11, 15, tzinfo=UTC)
    before, after = make_telemetry(), make_telemetry()
    with metered(catalog(change_at=change), before, price_clock=lambda: change - timedelta(microseconds=1)):
        chat(openai_server, max_tokens=300)
    with metered(catalog(change_at=change), after, price_clock=lambda: change):
        chat(openai_server, max_tokens=300)
    assert (span_usage(before)[semconv.TM_COST], span_usage(after)[semconv.TM_COST]) == ("0.007936", "0.0045528")
    assert span_usage(after)[semconv.TM_PRICE_FROM] == change.isoformat() != span_usage(before)[semconv.TM_PRICE_FROM]


# --- into the store -------------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="the store extra (absent in the openai 1.x venv)")
def test_token_types_reach_llm_usage_and_the_counter_series_through_otlp(
    openai_server: OpenAICompatibleServer, migrated_store: Any
) -> None:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
    from tokenmeter.collector.payloads import Signal, decode_protobuf
    from tokenmeter.store.usage_queries import period_usage

    telemetry = make_telemetry()
    with metered(catalog(), telemetry), tokenmeter.attribution(user="alice"):
        openai_server.state.usage_fields = {"prompt_tokens": 2000, **openai_usage(1536, 64)}
        chat(openai_server, max_tokens=300)
        openai_server.state.usage_fields = {"prompt_tokens": 1200, **dashscope_usage(0, 1024)}
        chat(openai_server, max_tokens=50, stream=True)
    # The OTLP wire format of what the SDK exported, into the store as the receiver puts it.
    exported = {
        Signal.TRACES: encode_spans(telemetry.spans()).SerializeToString(),
        Signal.METRICS: encode_metrics(telemetry.metric_reader.get_metrics_data()).SerializeToString(),
    }
    for signal, data in exported.items():
        insert_payloads(migrated_store, signal, [decode_protobuf(signal, data)], IngestSchema.for_store(embedded=True))

    rows = migrated_store.query(
        "SELECT input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,"
        " reasoning_output_tokens, audio_input_tokens, image_input_tokens, toString(cost), price_from, price_tier"
        " FROM llm_usage FINAL ORDER BY input_tokens"
    ).result_rows
    assert rows == [
        (1200, 50, 0, 1024, 0, 0, 0, "0.006624", "2020-01-01T00:00:00+00:00", "1"),
        (2000, 300, 1536, 0, 64, 0, 0, "0.007936", "2020-01-01T00:00:00+00:00", "1"),
    ]
    series = migrated_store.query(
        "SELECT token_type, token_cache, token_phase FROM usage_counter_series FINAL"
        " WHERE metric = {metric:String} ORDER BY token_type, token_cache, token_phase",
        parameters={"metric": semconv.METRIC_USAGE_TOKENS},
    ).result_rows
    assert series == [("input", "creation", ""), ("input", "none", ""), ("input", "read", ""),
                      ("output", "", ""), ("output", "", "reasoning"), ("output", "", "response")]  # fmt: skip
    # Any sum over token types is what it was: the parts add up to the calls' totals.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    [alice] = period_usage(migrated_store, today, today + timedelta(days=1), "user")
    assert (alice.subject, alice.input_tokens, alice.output_tokens) == ("alice", 3200, 350)
