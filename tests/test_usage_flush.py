"""The usage counters leave the process soon after calls finish, not only every OTEL_METRIC_EXPORT_INTERVAL.

The real openai SDK against a local server, the real OTel SDK with a periodic reader whose
interval (1 h) never comes: every export seen here is tokenmeter's debounced flush.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai_server import SERVER_COMPLETION_TOKENS, SERVER_PROMPT_TOKENS, OpenAICompatibleServer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from telemetry_fixtures import CollectingMetricExporter, make_telemetry, metric_points
from waiting import wait_for

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.instrumentation.usage_flush import flushing
from tokenmeter.instrumentation.usage_metrics import AccountingPipeline
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

MODEL = "qwen2.5-7b-instruct"
MESSAGES = [{"role": "user", "content": "人工智能是什么？"}]
TOKENS_PER_CALL = SERVER_PROMPT_TOKENS + SERVER_COMPLETION_TOKENS
NEVER_MS = 3_600_000  # the periodic export interval: nothing in these tests waits that long
APP = Path(__file__).parent / "support" / "auto_instrumented_app.py"


def exported_tokens(exporter: CollectingMetricExporter) -> int:
    """The usage token total in the latest export (cumulative, so the latest one holds it all)."""
    if not exporter.batches:
        return 0
    return sum(value for _attributes, value in metric_points(exporter.batches[-1], semconv.METRIC_USAGE_TOKENS))


@contextmanager
def metered(exporter: CollectingMetricExporter, **settings: Any) -> Iterator[None]:
    """tokenmeter on an SDK MeterProvider whose periodic reader never fires, exporting to ``exporter``."""
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=NEVER_MS)])
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=make_telemetry().tracer_provider, meter_provider=provider,
                            settings=Settings(hash_key="k", **settings),
                            registry=TokenizerRegistry(ModelCatalog.load(None)), skip_dep_check=True)  # fmt: skip
    try:
        yield
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def call(server: OpenAICompatibleServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_usage_is_exported_soon_after_the_calls_by_default(openai_server: OpenAICompatibleServer) -> None:
    exporter = CollectingMetricExporter()
    with metered(exporter):  # default settings: TOKENMETER_USAGE_FLUSH_SECONDS=1
        for _ in range(3):
            call(openai_server)
        # Long before the 1 h interval, with no flush() and no exit: the debounced export.
        assert wait_for(lambda: exported_tokens(exporter) == 3 * TOKENS_PER_CALL), exported_tokens(exporter)


def test_calls_that_keep_finishing_are_exported_at_most_once_per_period(
    openai_server: OpenAICompatibleServer,
) -> None:
    exporter = CollectingMetricExporter()
    period = 0.5
    with metered(exporter, usage_flush_seconds=period):
        started = time.monotonic()
        calls = 0
        deadline = started + 60
        # Calls never stop finishing, yet exports keep coming (a debounce that waited for quiet would starve).
        while len(exporter.batches) < 3 and time.monotonic() < deadline:
            call(openai_server)
            calls += 1
        elapsed = time.monotonic() - started
        exports = len(exporter.batches)
    assert exports >= 3, f"{exports} exports in {elapsed:.1f} s of continuous calls"
    # Each export waits a full period after the previous one ended: a slow machine only makes fewer.
    assert exports <= elapsed / period, f"{exports} exports in {elapsed:.1f} s ({calls} calls)"


def test_zero_switches_the_flush_off(openai_server: OpenAICompatibleServer) -> None:
    exporter = CollectingMetricExporter()
    with metered(exporter, usage_flush_seconds=0):
        call(openai_server)
        time.sleep(3)  # three times the default period
        assert exporter.batches == []


class UnreachableCollectorExporter(CollectingMetricExporter):
    """Exports that fail the way a reader's flush can: with an exception out of force_flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flush_attempts = 0

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        self.flush_attempts += 1
        raise ConnectionRefusedError("collector unreachable")


def test_a_failing_export_is_logged_once_and_never_reaches_the_app(
    openai_server: OpenAICompatibleServer, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = UnreachableCollectorExporter()
    with caplog.at_level(logging.DEBUG, logger="tokenmeter"), metered(exporter, usage_flush_seconds=0.2):
        call(openai_server)  # the app's calls all return normally ...
        assert wait_for(lambda: exporter.flush_attempts >= 1)
        call(openai_server)
        assert wait_for(lambda: exporter.flush_attempts >= 2)
        errors = [r for r in caplog.records if r.name == "tokenmeter" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # ... and the failure is said once
    assert "usage counter flush" in errors[0].getMessage()


def test_an_auto_instrumented_process_exports_its_usage_before_it_is_killed(
    openai_server: OpenAICompatibleServer,
) -> None:
    """`opentelemetry-instrument` (tokenmeter's own accounting pipeline, exporters from OTEL_*): the usage is
    out while the process runs, so a SIGKILL (no exit hook runs) loses none of it."""
    env = {
        **os.environ,
        "TEST_OPENAI_BASE_URL": openai_server.base_url,
        "TEST_WAIT_FOR_SIGNAL": "1",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": str(NEVER_MS),
        "TOKENMETER_HASH_KEY": "k",
    }
    command = [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(APP)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(semconv.METRIC_USAGE_TOKENS in line for line in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                if process.poll() is not None:
                    break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert any("app done" in line for line in seen), "".join(seen)
    assert any(semconv.METRIC_USAGE_TOKENS in line for line in seen), "".join(seen)[-3000:]


class FailingOnceExporter(CollectingMetricExporter):
    """The collector refuses the next export (once), as a down collector would."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self.fail_next:
            self.fail_next = False
            return MetricExportResult.FAILURE
        return super().export(metrics_data, timeout_millis, **kwargs)


def _users_in_last_export(exporter: CollectingMetricExporter) -> dict[str, int]:
    points = metric_points(exporter.batches[-1], semconv.METRIC_USAGE_TOKENS)
    return {str(attributes[semconv.ENDUSER_ID]): int(value) for attributes, value in points}


def test_a_flush_sends_only_the_series_that_changed_and_a_periodic_export_sends_all() -> None:
    # tokenmeter's own accounting pipeline (the opentelemetry-instrument default): a flush a second of
    # every series would be 40,000 points/s for 5,000 users; a flush of the changed ones is ~4 per call.
    exporter = FailingOnceExporter()
    pipeline = AccountingPipeline(cardinality_limit=1000, exporters=[exporter])
    tokens = pipeline.provider.get_meter(semconv.INSTRUMENTATION_SCOPE).create_counter(semconv.METRIC_USAGE_TOKENS)
    try:
        for user in range(50):
            tokens.add(100, {semconv.ENDUSER_ID: f"u{user}"})
        pipeline.force_flush()  # as the periodic export and the exit flush do: every series
        assert len(_users_in_last_export(exporter)) == 50
        tokens.add(7, {semconv.ENDUSER_ID: "u3"})
        with flushing():
            pipeline.force_flush()
        assert _users_in_last_export(exporter) == {"u3": 107}
        batches = len(exporter.batches)
        with flushing():  # nothing changed: nothing is sent
            pipeline.force_flush()
        assert len(exporter.batches) == batches
        # a flush the collector refused is sent again by the next one
        tokens.add(1, {semconv.ENDUSER_ID: "u4"})
        exporter.fail_next = True
        with flushing():
            pipeline.force_flush()
        assert len(exporter.batches) == batches
        with flushing():
            pipeline.force_flush()
        assert _users_in_last_export(exporter) == {"u4": 101}
        pipeline.force_flush()
        assert len(_users_in_last_export(exporter)) == 50 and _users_in_last_export(exporter)["u3"] == 107
    finally:
        pipeline.shutdown()
