"""One client module (ollama_patch, anthropic_patch, ...) patched with a real Metering, for that client's tests.

`metered_client(client, registry)` yields a factory: each call wires the client's ``patch`` to a fresh Metering and
in-memory telemetry (and a quota gate when the settings name an enforcer), as the instrumentor wires it; everything
is unpatched and shut down at the end. `Metered` reads what was emitted, after finishing every pending call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from telemetry_fixtures import Telemetry, make_telemetry

from tokenmeter import semconv
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.instrumentor import VERSION, _metering, _quota_gate
from tokenmeter.instrumentation.openai_patch import RequestOptions
from tokenmeter.instrumentation.telemetry_outputs import TelemetryOutputs, flush_providers
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry


@dataclass
class Metered:
    telemetry: Telemetry
    outputs: TelemetryOutputs
    finalizer: BackgroundFinalizer

    def flush(self, timeout_s: float = 10.0) -> None:
        assert self.finalizer.flush(timeout_s)
        assert flush_providers(self.outputs.providers(), timeout_s)

    def spans(self) -> list[dict[str, Any]]:
        self.flush()
        return [{"name": s.name, "status": s.status.status_code, **dict(s.attributes or {})}
                for s in self.telemetry.spans()]  # fmt: skip

    def only_span(self) -> dict[str, Any]:
        spans = self.spans()
        assert len(spans) == 1, [s["name"] for s in spans]
        return spans[0]

    def totals(self, metric: str, *dimensions: str) -> dict[tuple[Any, ...], int]:
        """A counter's totals keyed by the user and ``dimensions``."""
        self.flush()
        totals: dict[tuple[Any, ...], int] = {}
        for attributes, value in self.telemetry.points(metric):
            key = (attributes.get(semconv.ENDUSER_ID), *(attributes.get(name) for name in dimensions))
            totals[key] = totals.get(key, 0) + value
        return totals

    def tokens(self) -> dict[tuple[Any, ...], int]:
        """Usage counter totals keyed by (user, token type)."""
        return self.totals(semconv.METRIC_USAGE_TOKENS, semconv.GEN_AI_TOKEN_TYPE)


@contextmanager
def metered_client(client: ModuleType, registry: TokenizerRegistry) -> Iterator[Callable[..., Metered]]:
    """A factory of `Metered` wirings of ``client``'s patch (settings: `Settings` fields over the tests' defaults)."""
    opened: list[tuple[list[Any], Metered, Any]] = []

    def start(**settings: Any) -> Metered:
        telemetry = make_telemetry()
        settings_ = Settings(**{"hash_key": "test-hash-key", "local_count": "always", **settings})
        outputs = TelemetryOutputs.open(settings_, telemetry.tracer_provider, telemetry.meter_provider, VERSION)
        finalizer = BackgroundFinalizer()
        gate = _quota_gate(settings_, outputs.instruments)
        metering = _metering(settings_, outputs, registry, finalizer)
        targets = client.patch(metering, RequestOptions(stream_usage="off", propagate="never", quota=gate))
        metered = Metered(telemetry, outputs, finalizer)
        opened.append((targets, metered, gate))
        return metered

    try:
        yield start
    finally:
        for targets, metered, gate in opened:
            client.unpatch(targets)
            metered.finalizer.flush(10)
            if gate is not None:
                gate.client.close()
            metered.outputs.shutdown()
