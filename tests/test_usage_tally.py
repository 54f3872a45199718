"""Usage increments summed in memory reach the SDK counters at every collection, and nothing is lost."""

from __future__ import annotations

import openai
from openai_server import SERVER_COMPLETION_TOKENS, SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from telemetry_fixtures import make_telemetry, metric_points

import tokenmeter
from tokenmeter import semconv
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.usage_tally import HOOK_INSTRUMENT, UsageTally, tally_for
from tokenmeter.settings import Settings

ALICE = {semconv.ENDUSER_ID: "alice"}
BOB = {semconv.ENDUSER_ID: "bob"}


def _totals(reader: InMemoryMetricReader, name: str = "calls") -> dict[str, int]:
    return {
        attributes[semconv.ENDUSER_ID]: value for attributes, value in metric_points(reader.get_metrics_data(), name)
    }


def test_every_reader_sees_the_summed_increments_at_its_collection() -> None:
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[first, second]).get_meter("tokenmeter")
    counter = meter.create_counter("calls")
    tally = tally_for(meter, max_series=100)
    assert tally is not None
    for _ in range(3):
        tally.add(counter, 1, ALICE)
    tally.add(counter, 5, BOB)
    assert _totals(first) == {"alice": 3, "bob": 5}
    tally.add(counter, 1, ALICE)
    assert _totals(second) == {"alice": 4, "bob": 5}  # pushed at the first reader's collection, cumulative here
    assert _totals(first) == {"alice": 4, "bob": 5}
    assert not any(m.name == HOOK_INSTRUMENT for m in _metric_names(first))


def _metric_names(reader: InMemoryMetricReader) -> list:
    data = reader.get_metrics_data()
    return [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics] if data else []


def test_a_full_tally_hands_its_series_over_at_once() -> None:
    reader = InMemoryMetricReader()
    counter = MeterProvider(metric_readers=[reader]).get_meter("tokenmeter").create_counter("calls")
    tally = UsageTally(max_series=2)  # no hook: only a full tally pushes
    tally.add(counter, 1, ALICE)
    assert _totals(reader) == {}
    tally.add(counter, 2, BOB)  # the second series fills it
    assert _totals(reader) == {"alice": 1, "bob": 2}


def test_a_meter_that_never_collects_gets_no_tally() -> None:
    assert tally_for(NoOpMeter("tokenmeter"), max_series=100) is None


def test_instrumenting_again_on_the_same_provider_keeps_counting(openai_server: OpenAICompatibleServer) -> None:
    """The SDK returns the first hook on a second registration; the second instrumentation must use its tally."""
    telemetry = make_telemetry()
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    for _ in range(2):
        instrumentor = TokenmeterInstrumentor()
        instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            settings=Settings(hash_key="k"),
            skip_dep_check=True,
        )
        with tokenmeter.attribution(user="alice"):
            for _ in range(3):
                client.chat.completions.create(
                    model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "hi"}]
                )
        assert tokenmeter.flush(5)
        instrumentor.uninstrument()
    calls = sum(value for _, value in telemetry.points(semconv.METRIC_USAGE_CALLS))
    tokens = {a[semconv.GEN_AI_TOKEN_TYPE]: v for a, v in telemetry.points(semconv.METRIC_USAGE_TOKENS)}
    assert calls == 6
    assert tokens == {"input": 6 * SERVER_PROMPT_TOKENS, "output": 6 * SERVER_COMPLETION_TOKENS}
