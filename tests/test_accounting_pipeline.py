"""The usage counters' own pipeline keeps thousands of users exact."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from telemetry_fixtures import CollectingMetricExporter, metric_points

from tokenmeter import semconv
from tokenmeter.instrumentation.usage_metrics import AccountingPipeline
from tokenmeter.semconv import SERVICE_INSTANCE_ID

USERS = 5_000
OVERFLOW = "otel.metric.overflow"


def _record_per_user(provider: MeterProvider) -> None:
    counter = provider.get_meter("tokenmeter").create_counter(semconv.METRIC_USAGE_TOKENS)
    for round_ in range(3):
        for i in range(USERS):
            counter.add(i + round_, {semconv.ENDUSER_ID: f"user-{i}", semconv.GEN_AI_TOKEN_TYPE: "input"})


def _per_user(exporter: CollectingMetricExporter) -> dict[str, int]:
    totals: dict[str, int] = {}
    for attributes, value in metric_points(exporter.batches[-1], semconv.METRIC_USAGE_TOKENS):
        key = attributes.get(semconv.ENDUSER_ID, OVERFLOW if attributes.get(OVERFLOW) else "?")
        totals[key] = totals.get(key, 0) + value
    return totals


def test_five_thousand_users_stay_exact_in_the_accounting_pipeline() -> None:
    exporter = CollectingMetricExporter()
    pipeline = AccountingPipeline(cardinality_limit=100_000, exporters=[exporter])
    _record_per_user(pipeline.provider)
    assert pipeline.force_flush()
    totals = _per_user(exporter)
    assert OVERFLOW not in totals
    assert len(totals) == USERS
    assert all(totals[f"user-{i}"] == 3 * i + 3 for i in range(USERS))
    assert pipeline.resource.attributes[SERVICE_INSTANCE_ID]  # restarts start new series
    pipeline.shutdown()


def test_the_sdk_default_limit_would_fold_users_into_an_overflow_series() -> None:
    """The control: what the dedicated pipeline protects against really happens."""
    exporter = CollectingMetricExporter()
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=10**9)])
    _record_per_user(provider)
    provider.force_flush()
    totals = _per_user(exporter)
    assert len(totals) < USERS
    assert totals.get(OVERFLOW, 0) > 0
    provider.shutdown()


def test_counters_are_exported_cumulatively_whatever_the_host_prefers(monkeypatch) -> None:
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    pipeline = AccountingPipeline(cardinality_limit=10)
    [reader] = pipeline.readers
    assert type(reader._exporter.wrapped).__name__ == "OTLPMetricExporter"  # (flushes send only changed series)
    temporalities = set(reader._instrument_class_temporality.values())
    assert temporalities == {AggregationTemporality.CUMULATIVE}
    pipeline.shutdown()
