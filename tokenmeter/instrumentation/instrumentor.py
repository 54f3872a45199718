"""`TokenmeterInstrumentor`: what `opentelemetry-instrument` loads, and `tokenmeter.instrument()` calls.

Registered in the `opentelemetry_instrumentor` entry-point group, so
`opentelemetry-instrument python app.py` activates it with environment
variables only; `OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tokenmeter` switches it off.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Collection
from datetime import datetime
from types import ModuleType
from typing import Any, Final

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from tokenmeter.answer_cache.configuration import open_answer_cache
from tokenmeter.answer_cache.sealed_cache import AnswerCache
from tokenmeter.catalog import CatalogError, ModelCatalog
from tokenmeter.instrumentation import anthropic_patch, dashscope_patch, ollama_patch, openai_batch
from tokenmeter.instrumentation.billing import LocalCountPolicy
from tokenmeter.instrumentation.content_hash import ContentHasher
from tokenmeter.instrumentation.exit_hooks import install_exit_hooks
from tokenmeter.instrumentation.feedback import rating_sink, use_rating_sink
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.hop_servers import PROCESS_HOP_SERVERS
from tokenmeter.instrumentation.metering import Metering, MeteringOptions
from tokenmeter.instrumentation.openai_patch import RequestOptions, Target, patch, unpatch
from tokenmeter.instrumentation.quota.client import QuotaClient
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.safety import contained, logger
from tokenmeter.instrumentation.telemetry_outputs import TelemetryOutputs, flush_providers
from tokenmeter.instrumentation.usage_metrics import Instruments
from tokenmeter.settings import (
    Settings,
    capture_message_content,
    enforcer_client_token,
    get_settings,
    hash_key_bytes,
)
from tokenmeter.tokenizers import TokenizerRegistry

VERSION = "0.1.0"
# What a SIGTERM may spend on exporting before the process ends (its stopper waits ~30 s before SIGKILL).
SIGTERM_FLUSH_SECONDS: Final = 5.0
# The clients besides the openai SDK (docs/instrumentation.md, "Clients and endpoints"): each patched when the app
# imports its package (PACKAGE), through a module with patch(metering, options) and unpatch(targets).
OTHER_CLIENTS: Final[tuple[ModuleType, ...]] = (ollama_patch, dashscope_patch, anthropic_patch, openai_batch)


def _load_catalog(settings: Settings) -> ModelCatalog:
    """The catalog with the user's file; if that file is broken, say why and use the built-in one.

    Metering with built-in entries (and server-reported usage) beats not metering at all.
    """
    try:
        return ModelCatalog.load(settings.models)
    except CatalogError as exc:
        logger.error("tokenmeter: %s. Using the built-in model catalog only until TOKENMETER_MODELS is fixed.", exc)
        return ModelCatalog.load(None)


def _patch_client(client: ModuleType, metering: Metering, options: RequestOptions) -> list[Target]:
    """One other client's methods wrapped; a client that cannot be patched (its import fails) is left alone."""
    with contained(f"patching {client.__name__}"):
        return list(client.patch(metering, options))
    return []


def _when_imported(package: str, patch_client: Callable[[], None]) -> None:
    """Patch a client once the app imports its package (at once if it has): importing every SDK that happens to be
    installed would slow the app's start for clients it never uses."""
    wrapt.register_post_import_hook(lambda _module: patch_client(), package)


def _register_langchain(metering: Metering | None, quota: QuotaGate | None) -> None:
    """LangChain runs of classes no patch meters: metered by the callback handler, and checked with ``quota``."""
    with contained("LangChain callback registration"):
        from tokenmeter.integrations.langchain_callback import register

        register(metering, quota)


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


def _answer_cache(settings: Settings) -> AnswerCache | None:
    """The repeat-answer cache when TOKENMETER_ANSWER_CACHE asks for one (and it can be had); else None."""
    with contained("answer cache start"):
        return open_answer_cache(settings)
    return None


def _metering(
    settings: Settings,
    outputs: TelemetryOutputs,
    given_registry: TokenizerRegistry | None,
    finalizer: BackgroundFinalizer,
    price_clock: Callable[[], datetime] | None = None,
) -> Metering:
    """Metering priced by the settings' catalog; counting with ``given_registry`` if any, else on that catalog."""
    catalog = _load_catalog(settings)
    registry = given_registry or TokenizerRegistry(catalog, allow_download=settings.allow_download)
    if settings.preload_models:
        registry.preload(settings.preload_models)
    return Metering(
        tracer=outputs.tracer,
        instruments=outputs.instruments,
        catalog=catalog,
        registry=registry,
        hasher=ContentHasher(hash_key_bytes(settings)),
        finalizer=finalizer,
        usage_recorded=outputs.usage_flusher.notify if outputs.usage_flusher is not None else None,
        options=MeteringOptions(
            capture_content=capture_message_content(),
            local_count=LocalCountPolicy(settings.local_count, settings.drift_sample_rate),
            hop_servers=PROCESS_HOP_SERVERS.add_all(settings.hop_servers),
            price_clock=price_clock,
        ),
    )


class TokenmeterInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Meters every OpenAI-SDK call: one span, the GenAI metrics and tokenmeter's usage counters.

    Keyword arguments of `instrument()`:
      tracer_provider, meter_provider: as for any OTel instrumentor. When a meter
        provider is given, the usage counters use it too (configure its readers'
        cardinality limits yourself); otherwise they get their own pipeline.
      logger_provider: where ratings (`tokenmeter.feedback`) go; otherwise the global
        one if configured, else a pipeline of their own from OTEL_LOGS_EXPORTER.
      settings: a `Settings` to use instead of the environment.
      registry: a `TokenizerRegistry` to count with (tests, preloaded registries).
      price_clock: a function returning the (timezone-aware) time calls are priced at, instead of
        each call's start: for backfilling past days, whose calls cost the price valid then.
    """

    # Class-level state: BaseInstrumentor is a singleton whose __init__ runs again on
    # every `TokenmeterInstrumentor()`, so instance state set there would be lost.
    _finalizer = BackgroundFinalizer()
    _targets: list[Target] = []  # noqa: RUF012 - replaced, never mutated in place
    _client_targets: list[tuple[ModuleType, list[Target]]] = []  # noqa: RUF012 - the other clients' (replaced)
    _outputs: TelemetryOutputs | None = None
    _quota: QuotaGate | None = None
    _current_metering: Metering | None = None  # the current instrument()'s, for the clients' import hooks
    _exit_hooks_installed = False

    def instrumentation_dependencies(self) -> Collection[str]:
        # None: every client is optional and patched only where installed. A declared "openai" would make
        # `tokenmeter.instrument()` meter nothing in an app that calls only Ollama or DashScope, say.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        settings: Settings = kwargs.get("settings") or get_settings()
        outputs = TelemetryOutputs.open(settings, kwargs.get("tracer_provider"), kwargs.get("meter_provider"), VERSION,
                                        kwargs.get("logger_provider"))  # fmt: skip
        self._outputs = outputs
        use_rating_sink(rating_sink(outputs.rating_log, settings))
        metering = _metering(settings, outputs, kwargs.get("registry"), self._finalizer, kwargs.get("price_clock"))
        type(self)._current_metering = metering
        type(self)._quota = _quota_gate(settings, outputs.instruments)  # on the class: quota_client() reads it there
        options = RequestOptions(stream_usage=settings.stream_usage, propagate=settings.propagate, quota=self._quota,
                                 answers=_answer_cache(settings))  # fmt: skip
        self._targets = patch(metering, options)
        type(self)._client_targets = []
        for client in OTHER_CLIENTS:
            _when_imported(client.PACKAGE, functools.partial(self._patch_other_client, client, metering, options))
        # LangChain LLM classes that do not call the openai SDK: metered from LangChain's callbacks.
        wrapt.register_post_import_hook(
            lambda _module: _register_langchain(metering, options.quota), "langchain_core.callbacks"
        )
        if not self._exit_hooks_installed:
            type(self)._exit_hooks_installed = True
            # At exit, and on SIGTERM: servers such as Chatchat's are stopped by signal.
            install_exit_hooks(self._flush_at_exit, self._flush_at_sigterm, SIGTERM_FLUSH_SECONDS + 3.0)
        logger.debug("tokenmeter instrumented %d OpenAI SDK methods", len(self._targets))

    @classmethod
    def _patch_other_client(cls, client: ModuleType, metering: Metering, options: RequestOptions) -> None:
        """An import hook's work. Hooks stay registered after uninstrument: one of an earlier instrument() (another
        Metering) does nothing; nor does a second import of the package."""
        if cls._current_metering is not metering or any(patched is client for patched, _ in cls._client_targets):
            return
        cls._client_targets = [*cls._client_targets, (client, _patch_client(client, metering, options))]

    @classmethod
    def quota_client(cls) -> QuotaClient | None:
        """The enforcer client of the instrumented process (None without TOKENMETER_ENFORCER_URL)."""
        return cls._quota.client if cls._quota is not None else None

    def _uninstrument(self, **kwargs: Any) -> None:
        type(self)._current_metering = None
        unpatch(self._targets)
        self._targets = []
        for client, targets in self._client_targets:
            client.unpatch(targets)
        type(self)._client_targets = []
        if "langchain_core.callbacks" in sys.modules:
            _register_langchain(None, None)
        outputs = self._outputs
        if outputs is not None:
            outputs.stop_usage_flush()
        self.flush()  # first: the finisher releases reservations through the quota client
        use_rating_sink(None)
        self._outputs = None  # the host may shut its providers down now; the exit hook must not flush them
        if self._quota is not None:
            self._quota.client.close()
            type(self)._quota = None
        if outputs is not None:
            outputs.shutdown()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Finish pending calls, then export their spans, the usage counters and the ratings now."""
        done = self._finalizer.flush(timeout_s)
        providers = self._outputs.providers() if self._outputs is not None else []
        return flush_providers(providers, timeout_s) and done

    def _flush_at_exit(self) -> None:
        # The debounced export stops first: it must not race the providers' own shutdown at exit.
        if self._outputs is not None:
            self._outputs.stop_usage_flush()
        self.flush()
        self._give_back_leases()

    def _flush_at_sigterm(self) -> None:
        self.flush(timeout_s=SIGTERM_FLUSH_SECONDS)
        self._give_back_leases()

    def _give_back_leases(self) -> None:
        """Quota leases no call is using go back to the enforcer now, not when it times them out."""
        if self._quota is not None:
            with contained("quota lease return"):
                self._quota.client.leases.end_all()
                self._quota.client.flush_sends(timeout_s=2.0)
