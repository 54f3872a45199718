"""An instrumented process that gets SIGTERM while its main thread holds a lock the flush needs.

Run by tests/test_sigterm_flush.py. The lock stands for stdout's or an exporter's: a span
processor's force_flush takes it. A flush run by the signal handler on the main thread itself
would wait for it forever; the process must still end.
"""

import os
import signal
import threading
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

held_by_main = threading.Lock()


class FlushNeedsTheLock(SpanProcessor):
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with held_by_main:
            print("flushed", flush=True)
            return True


tracer_provider = TracerProvider()
tracer_provider.add_span_processor(FlushNeedsTheLock())
TokenmeterInstrumentor().instrument(
    tracer_provider=tracer_provider, meter_provider=MeterProvider(), settings=Settings(),
    registry=TokenizerRegistry(ModelCatalog.load(None)), skip_dep_check=True,
)  # fmt: skip
with held_by_main:
    print("holding the lock", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(120)
