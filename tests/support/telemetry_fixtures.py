"""Real OpenTelemetry SDK pipelines with in-memory exporters, for asserting on what tokenmeter emits."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    span_exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    metric_reader: InMemoryMetricReader

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.span_exporter.get_finished_spans()

    def points(self, metric_name: str) -> list[tuple[dict[str, Any], Any]]:
        return metric_points(self.metric_reader.get_metrics_data(), metric_name)

    def metric(self, metric_name: str) -> Any:
        data = self.metric_reader.get_metrics_data()
        for metric in _metrics(data):
            if metric.name == metric_name:
                return metric
        raise AssertionError(f"no metric {metric_name}")


def make_telemetry(cardinality_limit: int = 100_000) -> Telemetry:
    from opentelemetry.sdk.metrics import Counter, Histogram

    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    reader = InMemoryMetricReader(cardinality_limits={Counter: cardinality_limit, Histogram: cardinality_limit})
    meter_provider = MeterProvider(metric_readers=[reader])
    return Telemetry(tracer_provider, span_exporter, meter_provider, reader)


def _metrics(data: MetricsData | None) -> Iterator[Any]:
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            yield from scope_metrics.metrics


def metric_points(data: MetricsData | None, metric_name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, value) per data point; the value is the sum for histograms."""
    points = []
    for metric in _metrics(data):
        if metric.name != metric_name:
            continue
        for point in metric.data.data_points:
            value = point.value if hasattr(point, "value") else point.sum
            points.append((dict(point.attributes), value))
    return points


class CollectingMetricExporter(MetricExporter):
    """A metric exporter that keeps the last batch it was given (cumulative)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import Counter, Histogram

        super().__init__(
            preferred_temporality={
                Counter: AggregationTemporality.CUMULATIVE,
                Histogram: AggregationTemporality.CUMULATIVE,
            }
        )
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def attribute_sets(points: Sequence[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    return [attributes for attributes, _ in points]
