"""Where metered calls go: the tracer, the metric instruments, and the providers to flush.

The GenAI histograms use the host's meter provider. The usage counters use it too
when `instrument()` was given one; otherwise they get tokenmeter's own accounting
pipeline (`usage_metrics.AccountingPipeline`). A debounced flusher exports the usage
counters soon after calls finish, from the provider they are on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Tracer, TracerProvider

from tokenmeter import semconv
from tokenmeter.instrumentation.safety import never_raises
from tokenmeter.instrumentation.usage_flush import UsageFlusher, usage_flusher
from tokenmeter.instrumentation.usage_metrics import AccountingPipeline, Instruments, create_instruments, meter_from
from tokenmeter.settings import Settings


@dataclass(frozen=True)
class TelemetryOutputs:
    tracer: Tracer
    instruments: Instruments
    # The host's providers tokenmeter emits to, flushed with it (on SIGTERM above all).
    host_providers: tuple[Any, ...]
    accounting: AccountingPipeline | None  # tokenmeter's own, when the host gave no meter provider
    usage_flusher: UsageFlusher | None  # None when the debounced export is off

    @classmethod
    def open(
        cls,
        settings: Settings,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        version: str,
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
        return cls(tracer, instruments, host_providers, accounting, flusher)

    def providers(self) -> list[Any]:
        """Every provider a flush exports: the host's, then the accounting pipeline's."""
        providers = [*self.host_providers]
        if self.accounting is not None:
            providers.append(self.accounting.provider)
        return providers

    def stop_usage_flush(self) -> None:
        """Stop the debounced export (before a last flush: it must not race the providers' shutdown)."""
        if self.usage_flusher is not None:
            self.usage_flusher.close()

    def shutdown(self) -> None:
        """Shut down what tokenmeter owns; the host's providers are the host's to shut down."""
        if self.accounting is not None:
            self.accounting.shutdown()


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
