"""Where metered calls and ratings go: the tracer, the metric instruments, the rating log, the providers to flush.

The GenAI histograms use the host's meter provider. The usage counters use it too
when `instrument()` was given one; otherwise they get tokenmeter's own accounting
pipeline (`usage_metrics.AccountingPipeline`). A debounced flusher exports the usage
counters soon after calls finish, from the provider they are on. Ratings
(`tokenmeter.feedback`) are OTel log records on the logger provider `RatingLog` finds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from tokenmeter import semconv
from tokenmeter.instrumentation.safety import never_raises, warn_once
from tokenmeter.instrumentation.usage_flush import UsageFlusher, usage_flusher
from tokenmeter.instrumentation.usage_metrics import (
    AccountingPipeline,
    Instruments,
    create_instruments,
    exporter_classes_from_environment,
    meter_from,
)
from tokenmeter.settings import Settings


@dataclass(frozen=True)
class TelemetryOutputs:
    tracer: Tracer
    instruments: Instruments
    # The host's providers tokenmeter emits to, flushed with it (on SIGTERM above all).
    host_providers: tuple[Any, ...]
    accounting: AccountingPipeline | None  # tokenmeter's own, when the host gave no meter provider
    usage_flusher: UsageFlusher | None  # None when the debounced export is off
    rating_log: RatingLog

    @classmethod
    def open(
        cls,
        settings: Settings,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        version: str,
        logger_provider: Any = None,
    ) -> TelemetryOutputs:
        """Outputs on the given providers; None means the global ones (and an accounting pipeline)."""
        tracer = trace.get_tracer(semconv.INSTRUMENTATION_SCOPE, version, tracer_provider=tracer_provider)
        host_providers = (
            tracer_provider or trace.get_tracer_provider(),
            meter_provider or metrics.get_meter_provider(),
        )
        spec_meter = meter_from(meter_provider, version)
        accounting = AccountingPipeline(settings.metrics_cardinality_limit) if meter_provider is None else None
        accounting_meter = meter_from(accounting.provider, version) if accounting is not None else spec_meter
        usage_provider = accounting.provider if accounting is not None else meter_provider
        flusher = usage_flusher(usage_provider, settings.usage_flush_seconds)
        instruments = create_instruments(spec_meter, accounting_meter, settings.metrics_cardinality_limit)
        return cls(tracer, instruments, host_providers, accounting, flusher, RatingLog(logger_provider, version))

    def providers(self) -> list[Any]:
        """Every provider a flush exports: the host's, the accounting pipeline's, the ratings' (once used)."""
        providers = [*self.host_providers]
        if self.accounting is not None:
            providers.append(self.accounting.provider)
        return providers + [p for p in self.rating_log.providers() if p not in providers]

    def stop_usage_flush(self) -> None:
        """Stop the debounced export (before a last flush: it must not race the providers' shutdown)."""
        if self.usage_flusher is not None:
            self.usage_flusher.close()

    def shutdown(self) -> None:
        """Shut down what tokenmeter owns; the host's providers are the host's to shut down."""
        if self.accounting is not None:
            self.accounting.shutdown()
        self.rating_log.shutdown()


class RatingLog:
    """Where ratings go: an OTel ``Logger`` of scope ``tokenmeter``, chosen at the first rating.

    The logger provider given to ``instrument(logger_provider=...)``; else the global one when
    something configured it (``opentelemetry-instrument`` does, with the exporters of
    ``OTEL_LOGS_EXPORTER``); else a provider of tokenmeter's own with the exporters
    ``OTEL_LOGS_EXPORTER`` names, as the usage counters get a pipeline of their own. With none
    named there is nowhere to send a rating: that is said once and ratings are dropped.
    """

    def __init__(self, given: Any, version: str) -> None:
        self._given = given
        self._version = version
        self._lock = threading.Lock()
        self._chosen = False
        self._logger: Any = None
        self._provider: Any = None  # the provider in use, flushed with the others
        self._own: Any = None  # tokenmeter's own, shut down with the outputs

    def logger(self) -> Any:
        """The logger ratings are emitted on; None when they can go nowhere."""
        with self._lock:
            if not self._chosen:
                self._chosen = True  # once, also when choosing fails: the failure is reported by the caller
                self._choose()
            return self._logger

    def _choose(self) -> None:
        from opentelemetry import _logs

        provider = self._given
        if provider is None:
            found = _logs.get_logger_provider()
            provider = found if _is_configured(found) else None
            if provider is not None:
                _warn_if_it_exports_nothing(provider)
        if provider is None:
            provider = self._own = own_logger_provider()
        if provider is not None:
            self._provider = provider
            self._logger = provider.get_logger(semconv.INSTRUMENTATION_SCOPE, self._version or None)

    def providers(self) -> list[Any]:
        return [self._provider] if self._provider is not None else []

    def flush(self, timeout_s: float = 10.0) -> bool:
        return flush_providers(self.providers(), timeout_s)

    def shutdown(self) -> None:
        """Shut down tokenmeter's own provider (the host's are the host's to shut down)."""
        own, self._own = self._own, None
        if own is not None:
            with self._lock:
                self._logger = self._provider = None
            own.shutdown()


def _is_configured(provider: Any) -> bool:
    """Whether the global logger provider is a real one (not the API's proxy that stands in until one is set)."""
    from opentelemetry._logs import NoOpLoggerProvider

    return not isinstance(provider, NoOpLoggerProvider) and type(provider).__name__ != "ProxyLoggerProvider"


def _warn_if_it_exports_nothing(provider: Any) -> None:
    """opentelemetry-instrument with OTEL_LOGS_EXPORTER=none sets a provider without processors: say so."""
    processors = getattr(getattr(provider, "_multi_log_record_processor", None), "_log_record_processors", None)
    if processors == ():
        warn_once("ratings-no-processor", "tokenmeter: the OTel logger provider exports nothing "
                  "(OTEL_LOGS_EXPORTER=none?): ratings (tokenmeter.feedback) are dropped. Set "
                  "OTEL_LOGS_EXPORTER=otlp to store them.")  # fmt: skip


def own_logger_provider() -> Any:
    """A logger provider with the exporters OTEL_LOGS_EXPORTER names, built as the SDK's configurator does;
    None (said once) when it names none."""
    from opentelemetry.sdk._logs import LoggerProvider as SdkLoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    exporters = exporter_classes_from_environment("logs")
    if not exporters:
        warn_once("ratings-no-exporter", "tokenmeter: no OTel logger provider is configured and "
                  "OTEL_LOGS_EXPORTER names no log exporter: ratings (tokenmeter.feedback) are dropped. "
                  "Set OTEL_LOGS_EXPORTER=otlp.")  # fmt: skip
        return None
    # Flushed by tokenmeter's own exit hooks (at exit and on SIGTERM) and shut down with the outputs.
    provider = SdkLoggerProvider(resource=Resource.create(), shutdown_on_exit=False)
    for exporter_class in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter_class()))
    return provider


def flush_providers(providers: Iterable[Any], timeout_s: float) -> bool:
    """Export what each provider holds now; False if any timed out or failed."""
    done = True
    for provider in providers:
        done = _force_flush(provider, timeout_s) and done
    return done


@never_raises("telemetry flush", default=False)
def _force_flush(provider: Any, timeout_s: float) -> bool:
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is None:  # the API's no-op providers
        return True
    return force_flush(int(timeout_s * 1000)) is not False
