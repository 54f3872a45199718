"""The OTel SDK's log pipeline with its in-memory exporter, for asserting on the ratings tokenmeter emits."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from telemetry_fixtures import make_telemetry

from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings


class Ratings:
    """A LoggerProvider whose records the test reads back."""

    def __init__(self) -> None:
        self.exporter = InMemoryLogRecordExporter()
        self.provider = LoggerProvider(shutdown_on_exit=False)
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))

    def records(self) -> list[ReadableLogRecord]:
        return list(self.exporter.get_finished_logs())

    def attributes(self) -> list[dict[str, Any]]:
        return [dict(record.log_record.attributes or {}) for record in self.records()]

    def only(self) -> tuple[ReadableLogRecord, dict[str, Any]]:
        records = self.records()
        assert len(records) == 1, [dict(r.log_record.attributes or {}) for r in records]
        return records[0], dict(records[0].log_record.attributes or {})


def instrument_with(ratings: Ratings, **settings: Any) -> TokenmeterInstrumentor:
    """tokenmeter instrumented with in-memory spans and metrics, and ratings going to ``ratings``."""
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            logger_provider=ratings.provider, settings=Settings(**settings),
                            skip_dep_check=True)  # fmt: skip
    return instrumentor
