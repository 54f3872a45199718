"""`TokenmeterInstrumentor`: what `opentelemetry-instrument` loads, and `tokenmeter.instrument()` calls.

Registered in the `opentelemetry_instrumentor` entry-point group, so
`opentelemetry-instrument python app.py` activates it with environment
variables only; `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tokenmeter` switches it off.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from collections.abc import Collection
from types import FrameType
from typing import Any, Final

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from tokenmeter import semconv
from tokenmeter.catalog import CatalogError, ModelCatalog
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.hop_servers import PROCESS_HOP_SERVERS
from tokenmeter.instrumentation.metering import Metering, MeteringOptions
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target, patch, unpatch
from tokenmeter.instrumentation.quota.client import QuotaClient
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.safety import logger, report_internal_error
from tokenmeter.instrumentation.usage_flush import UsageFlusher, usage_flusher
from tokenmeter.instrumentation.usage_metrics import AccountingPipeline, Instruments, create_instruments, meter_from
from tokenmeter.settings import Settings, capture_message_content, enforcer_client_token, get_settings
from tokenmeter.tokenizers import TokenizerRegistry

VERSION = "0.1.0"
# What a SIGTERM may spend on exporting before the process ends (its stopper waits ~30 s before SIGKILL).
SIGTERM_FLUSH_SECONDS: Final = 5.0


def _load_catalog(settings: Settings) -> ModelCatalog:
    """The catalog with the user's file; if that file is broken, say why and use the built-in one.

    Metering with built-in entries (and server-reported usage) beats not metering at all.
    """
    try:
        return ModelCatalog.load(settings.models)
    except CatalogError as exc:
        logger.error("tokenmeter: %s. Using the built-in model catalog only until TOKENMETER_MODELS is fixed.", exc)
        return ModelCatalog.load(None)


def _register_langchain(metering: Metering | None) -> None:
    try:
        from tokenmeter.integrations.langchain_callback import register

        register(metering)
    except Exception as exc:
        report_internal_error("LangChain callback registration", exc)


def _quota_gate(settings: Settings, instruments: Instruments) -> QuotaGate | None:
    """The enforcer client when TOKENMETER_ENFORCER_URL is set; no quota checks otherwise."""
    if not settings.enforcer_url:
        return None
    client = QuotaClient(
        settings.enforcer_url,
        enforcer_client_token(settings),
        timeout=settings.enforcer_timeout,
        fail_mode=settings.fail_mode,
        cache_seconds=settings.enforcer_cache_seconds,
    )
    logger.debug("tokenmeter: quota checks with %s (fail mode %s)", settings.enforcer_url, settings.fail_mode)
    return QuotaGate(client, instruments)


class TokenmeterInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Meters every OpenAI-SDK call: one span, the GenAI metrics and tokenmeter's usage counters.

    Keyword arguments of `instrument()`:
      tracer_provider, meter_provider: as for any OTel instrumentor. When a meter
        provider is given, the usage counters use it too (configure its readers'
        cardinality limits yourself); otherwise they get their own pipeline.
      settings: a `Settings` to use instead of the environment.
      registry: a `TokenizerRegistry` to count with (tests, preloaded registries).
    """

    # Class-level state: BaseInstrumentor is a singleton whose __init__ runs again on
    # every `TokenmeterInstrumentor()`, so instance state set there would be lost.
    _finalizer = BackgroundFinalizer()
    _targets: list[Target] = []  # noqa: RUF012 - replaced, never mutated in place
    _accounting: AccountingPipeline | None = None
    _quota: QuotaGate | None = None
    _usage_flusher: UsageFlusher | None = None
    # The host's providers tokenmeter emits to, flushed with it (on SIGTERM above all).
    _host_providers: tuple[Any, ...] = ()
    _exit_hooks_installed = False

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 1.0",)

    def _instrument(self, **kwargs: Any) -> None:
        settings: Settings = kwargs.get("settings") or get_settings()
        tracer_provider = kwargs.get("tracer_provider")
        tracer = trace.get_tracer(semconv.INSTRUMENTATION_SCOPE, VERSION, tracer_provider=tracer_provider)
        meter_provider = kwargs.get("meter_provider")
        self._host_providers = (
            tracer_provider or trace.get_tracer_provider(),
            meter_provider or metrics.get_meter_provider(),
        )
        spec_meter = meter_from(meter_provider, VERSION)
        if meter_provider is None:
            self._accounting = AccountingPipeline(settings.metrics_cardinality_limit)
            accounting_meter = meter_from(self._accounting.provider, VERSION)
        else:
            accounting_meter = spec_meter
        # Export the usage counters soon after calls finish, from the provider they are on.
        usage_provider = self._accounting.provider if self._accounting is not None else meter_provider
        self._usage_flusher = usage_flusher(usage_provider, settings.usage_flush_seconds)
        catalog = _load_catalog(settings)
        registry = kwargs.get("registry") or TokenizerRegistry(catalog, allow_download=settings.allow_download)
        if settings.preload_models:
            registry.preload(settings.preload_models)
        key = settings.hash_key.get_secret_value().encode() if settings.hash_key else None
        instruments = create_instruments(spec_meter, accounting_meter)
        metering = Metering(
            tracer=tracer,
            instruments=instruments,
            catalog=catalog,
            registry=registry,
            hasher=ContentHasher(key),
            finalizer=self._finalizer,
            usage_recorded=self._usage_flusher.notify if self._usage_flusher is not None else None,
            options=MeteringOptions(
                capture_content=capture_message_content(),
                count_locally=settings.local_count,
                drift_sample_rate=settings.drift_sample_rate,
                hop_servers=PROCESS_HOP_SERVERS.add_all(settings.hop_servers),
            ),
        )
        type(self)._quota = _quota_gate(settings, instruments)  # on the class: quota_client() reads it there
        options = RequestOptions(stream_usage=settings.stream_usage, propagate=settings.propagate, quota=self._quota)
        self._targets = patch(metering, options)
        # LangChain LLM classes that do not call the openai SDK: metered from LangChain's callbacks.
        wrapt.register_post_import_hook(lambda _module: _register_langchain(metering), "langchain_core.callbacks")
        self._install_exit_hooks()
        logger.debug("tokenmeter instrumented %d OpenAI SDK methods", len(self._targets))

    @classmethod
    def quota_client(cls) -> QuotaClient | None:
        """The enforcer client of the instrumented process (None without TOKENMETER_ENFORCER_URL)."""
        return cls._quota.client if cls._quota is not None else None

    def _uninstrument(self, **kwargs: Any) -> None:
        unpatch(self._targets)
        self._targets = []
        if "langchain_core.callbacks" in sys.modules:
            _register_langchain(None)
        if self._usage_flusher is not None:
            self._usage_flusher.close()
            self._usage_flusher = None
        self.flush()  # first: the finisher releases reservations through the quota client
        self._host_providers = ()  # the host may shut them down now; the exit hook must not flush them
        if self._quota is not None:
            self._quota.client.close()
            type(self)._quota = None
        if self._accounting is not None:
            self._accounting.shutdown()
            self._accounting = None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Finish pending calls, then export their spans and the usage counters now."""
        done = self._finalizer.flush(timeout_s)
        providers = [*self._host_providers]
        if self._accounting is not None:
            providers.append(self._accounting.provider)
        for provider in providers:
            force_flush = getattr(provider, "force_flush", None)
            if force_flush is None:  # the API's no-op providers
                continue
            try:
                done = force_flush(int(timeout_s * 1000)) is not False and done
            except Exception as exc:
                report_internal_error("telemetry flush", exc)
                done = False
        return done

    def _flush_at_exit(self) -> None:
        # The debounced export stops first: it must not race the providers' own shutdown at exit.
        if self._usage_flusher is not None:
            self._usage_flusher.close()
        self.flush()
        self._give_back_leases()

    def _flush_at_sigterm(self) -> None:
        self.flush(timeout_s=SIGTERM_FLUSH_SECONDS)
        self._give_back_leases()

    def _give_back_leases(self) -> None:
        """Quota leases no call is using go back to the enforcer now, not when it times them out."""
        if self._quota is not None:
            try:
                self._quota.client.leases.end_all()
                self._quota.client.flush_sends(timeout_s=2.0)
            except Exception as exc:
                report_internal_error("quota lease return", exc)

    def _install_exit_hooks(self) -> None:
        """Flush at exit, and on SIGTERM: servers such as Chatchat's are stopped by signal."""
        if self._exit_hooks_installed:
            return
        type(self)._exit_hooks_installed = True
        atexit.register(self._flush_at_exit)
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # The flush runs on a thread of its own, waited for a bounded time: the signal may have
            # interrupted this (main) thread inside a lock the flush needs (stdout's, an exporter's),
            # and the process must stop all the same.
            stopping = threading.Thread(target=self._flush_at_sigterm, name="tokenmeter-sigterm-flush", daemon=True)
            stopping.start()
            stopping.join(SIGTERM_FLUSH_SECONDS + 3.0)
            if previous == signal.SIG_IGN:
                return
            if callable(previous):
                previous(signum, frame)
            else:  # default action: restore it and re-deliver, so the process still ends
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except (ValueError, OSError) as exc:
            report_internal_error("SIGTERM handler", exc)
