"""The metric instruments tokenmeter records, and the pipeline that exports the usage counters.

Two kinds of metric:

- the GenAI conventions' histograms (`gen_ai.client.token.usage`,
  `gen_ai.client.operation.duration`), low-cardinality, on the host's meter
  provider like any other instrumentation;
- tokenmeter's usage counters (tokens, cost, calls per user, department, app and
  model), the accounting source. They must be exact, so by default they get a
  pipeline of their own: cumulative temporality whatever the host prefers (a lost
  export is recovered by the next one), a per-metric cardinality limit sized for
  thousands of users (the SDK default of 2000 series would fold the rest into one
  overflow series), and a `service.instance.id` so a restarted process starts new
  series instead of resetting old ones.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider

from tokenmeter import semconv
from tokenmeter.instrumentation.safety import contained, warn_once
from tokenmeter.instrumentation.usage_flush import changed_series_exporter
from tokenmeter.instrumentation.usage_tally import UsageTally, tally_for


@dataclass(frozen=True)
class Instruments:
    token_usage: Histogram
    operation_duration: Histogram
    usage_tokens: Counter
    usage_cost: Counter
    usage_calls: Counter
    quota_decisions: Counter
    # Sums usage increments between collections (usage_tally.py); None: they are added directly.
    usage_tally: UsageTally | None = None

    def add_usage(self, counter: Counter, value: int | float, attributes: Mapping[str, Any]) -> None:
        """Add to one of the usage counters, through the tally when there is one."""
        if self.usage_tally is not None:
            self.usage_tally.add(counter, value, attributes)
        else:
            counter.add(value, attributes)


def create_instruments(spec_meter: Meter, accounting_meter: Meter, max_series: int = 2000) -> Instruments:
    """``max_series``: the cardinality limit of the usage counters, which bounds the tally too."""
    return Instruments(
        token_usage=spec_meter.create_histogram(
            semconv.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(semconv.TOKEN_USAGE_BUCKETS),
        ),
        operation_duration=spec_meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(semconv.OPERATION_DURATION_BUCKETS),
        ),
        usage_tokens=accounting_meter.create_counter(
            semconv.METRIC_USAGE_TOKENS,
            unit="{token}",
            description="Billed tokens per user, department, app, model and token type.",
        ),
        usage_cost=accounting_meter.create_counter(
            semconv.METRIC_USAGE_COST,
            unit="{nano_currency_unit}",
            description=(
                "Cost in billionths of the currency in tokenmeter.cost.currency (an integer, so sums are exact)."
            ),
        ),
        usage_calls=accounting_meter.create_counter(
            semconv.METRIC_USAGE_CALLS,
            unit="{call}",
            description="LLM calls per user, department, app and model, failed ones with error.type.",
        ),
        quota_decisions=accounting_meter.create_counter(
            semconv.METRIC_QUOTA_DECISIONS,
            unit="{call}",
            description="Quota decisions for calls, by decision; fail_open=true when the enforcer did not answer.",
        ),
        usage_tally=tally_for(accounting_meter, max_series),
    )


def _cumulative_temporality() -> dict[type, object]:
    from opentelemetry.sdk.metrics import (
        Counter as SdkCounter,
    )
    from opentelemetry.sdk.metrics import (
        Histogram as SdkHistogram,
    )
    from opentelemetry.sdk.metrics import (
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    kinds = (SdkCounter, SdkHistogram, UpDownCounter, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return dict.fromkeys(kinds, AggregationTemporality.CUMULATIVE)


def cardinality_limits(limit: int) -> dict[type, int]:
    from opentelemetry.sdk.metrics import Counter as SdkCounter
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram

    return {SdkCounter: limit, SdkHistogram: limit}


def exporter_classes_from_environment(signal: Literal["metrics", "logs"]) -> list[type]:
    """The exporter classes OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER names, found the way the SDK's
    configurator finds them (entry points); empty when it names none."""
    try:
        from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
    except ImportError:  # pragma: no cover - very old SDKs
        return []
    names = _get_exporter_names(signal)
    if not names:
        return []
    metrics = signal == "metrics"
    _, metric_exporters, log_exporters = _import_exporters([], names if metrics else [], [] if metrics else names)
    return list((metric_exporters if metrics else log_exporters).values())


def _exporters_from_environment() -> list[object]:
    """The metric exporters OTEL_METRICS_EXPORTER names, built the way the SDK's configurator does."""
    exporters: list[object] = []
    for exporter_class in exporter_classes_from_environment("metrics"):
        try:
            exporters.append(exporter_class(preferred_temporality=_cumulative_temporality()))
        except TypeError:
            exporters.append(exporter_class())
    return exporters


class AccountingPipeline:
    """A MeterProvider of tokenmeter's own for the usage counters."""

    def __init__(self, cardinality_limit: int, exporters: Sequence[object] | None = None) -> None:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        if exporters is None:
            exporters = []  # when tokenmeter's own setup fails; the warning below says nothing is exported
            with contained("accounting metric exporter setup"):
                exporters = _exporters_from_environment()
        if not exporters:
            warn_once(
                "accounting-no-exporter",
                "tokenmeter: OTEL_METRICS_EXPORTER names no usable metric exporter; usage counters "
                "are recorded but not exported",
            )
        interval = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000"))
        # Wrapped: the debounced flush (usage_flush.py) sends only the series that changed.
        self.readers = [
            PeriodicExportingMetricReader(
                changed_series_exporter(exporter),
                export_interval_millis=interval,
                cardinality_limits=cardinality_limits(cardinality_limit),
            )
            for exporter in exporters
        ]
        resource = Resource.create()
        if semconv.SERVICE_INSTANCE_ID not in resource.attributes:
            resource = resource.merge(Resource({semconv.SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
        self.resource = resource
        self.provider = SdkMeterProvider(resource=resource, metric_readers=self.readers, shutdown_on_exit=False)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()


def meter_from(provider: MeterProvider | None, version: str) -> Meter:
    if provider is None:
        return metrics.get_meter(semconv.INSTRUMENTATION_SCOPE, version)
    return provider.get_meter(semconv.INSTRUMENTATION_SCOPE, version)
