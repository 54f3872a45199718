"""A month of history for `tokenmeter demo`, backfilled through the real pipeline with past timestamps.

The same people make the calls of each of the 30 days before today: their office hours
(09:00-18:00 in the demo policy's time zone) on weekdays, growing through the month, and the
nightly job alone at weekends. Every call goes through the instrumented openai SDK to a local
LLM server: tokenmeter's own metering counts, prices and records it. The telemetry is read from
in-memory readers after each office hour, dated to that hour (the counters' running totals at
its end, the spans spread over it) and sent over OTLP/HTTP to serve's receiver, which stores
it like any app's. So the aggregate tables, the trend panels and the spend alert's baseline
see a month.

The history is one exporting process of its own (``service.instance.id`` ``demo-history-…``)
whose counter series all start at the month's first hour, so each is a cumulative series apart
from today's live process, and its totals only grow with time. Every point is dated before
today began, both in UTC (the report's days) and in the policy's time zone (the budgets'
days): today's figures, the budgets and the demo's checks are today's traffic alone. No quota
is checked for past days (the enforcer decides in the current period only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from tokenmeter import semconv
from tokenmeter.demo.llm_server import DAY_HEADER
from tokenmeter.demo.run import WORKERS, DemoError, Endpoints, make_call
from tokenmeter.demo.workload import Call, plan

DAYS: Final = 30
OFFICE_HOURS: Final = range(9, 18)  # local hours with calls; each hour's counters are dated at its end
DAY_SCALE: Final = 0.12  # a past weekday at the end of the month: this share of today's demo calls
NIGHTLY_USER: Final = "batch-bot"  # the nightly summariser also runs at weekends
STAMP_BEFORE_HOUR_END: Final = timedelta(seconds=30)


@dataclass(frozen=True)
class HistoryDay:
    day: date  # in the policy's time zone
    hour_ends: tuple[datetime, ...]  # UTC, one per office hour: when that hour's counters are dated
    calls: tuple[Call, ...]


def today_began(now: datetime, zone: ZoneInfo) -> datetime:
    """The earlier of today's midnights, UTC and local: history before it is in no current day period."""
    utc_midnight = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    local_midnight = datetime.combine(now.astimezone(zone).date(), time(), zone).astimezone(UTC)
    return min(utc_midnight, local_midnight)


def hour_ends(day: date, zone: ZoneInfo) -> tuple[datetime, ...]:
    return tuple(
        datetime.combine(day, time(hour), zone).astimezone(UTC) + timedelta(hours=1) - STAMP_BEFORE_HOUR_END
        for hour in OFFICE_HOURS
    )


def history_days(now: datetime, zone: ZoneInfo, scale: float, days: int = DAYS) -> list[HistoryDay]:
    """The ``days`` local days before today whose office hours all end before today began, oldest first."""
    began = today_began(now, zone)
    picked: list[date] = []
    day = now.astimezone(zone).date()
    while len(picked) < days:
        day -= timedelta(days=1)
        if hour_ends(day, zone)[-1] < began:
            picked.append(day)
    picked.reverse()
    return [HistoryDay(day, hour_ends(day, zone), tuple(_day_calls(day, index, days, scale)))
            for index, day in enumerate(picked)]  # fmt: skip


def _day_calls(day: date, index: int, days: int, scale: float) -> list[Call]:
    """Weekdays: everyone, a little more each week (60 % of the last day's calls on the first); weekends: the
    nightly job. A seed per day: every run makes the same month."""
    growth = 0.6 + 0.4 * index / max(1, days - 1)
    calls = plan(seed=day.toordinal(), scale=DAY_SCALE * scale * growth)
    if day.weekday() >= 5:
        calls = [call for call in calls if call.person.user == NIGHTLY_USER]
    return calls


def _hours(calls: Sequence[Call], hours: int) -> list[Sequence[Call]]:
    """The calls in ``hours`` consecutive groups, as even as they go."""
    return [calls[hour * len(calls) // hours : (hour + 1) * len(calls) // hours] for hour in range(hours)]


@dataclass
class _Recorder:
    """The history process's telemetry, read after each hour and dated to it."""

    instrumentor: Any
    reader: Any  # InMemoryMetricReader
    spans: Any  # InMemorySpanExporter
    series_start_ns: int
    last_values: dict[tuple[object, ...], float]

    def hour_done(self, hour_end: datetime) -> tuple[Any, list[Any]]:
        """Finish the hour's calls; the counters as of ``hour_end`` and the hour's spans, dated."""
        if not self.instrumentor.flush(timeout_s=30.0):
            raise DemoError("the history's calls did not finish metering in 30 s")
        end_ns = _ns(hour_end)
        metrics = _dated_points(self.reader.get_metrics_data(), self.series_start_ns, end_ns, self.last_values)
        finished = sorted(self.spans.get_finished_spans(), key=lambda span: span.start_time)
        self.spans.clear()
        return metrics, _dated_spans(finished, end_ns - 3600 * 10**9 + _ns_of(STAMP_BEFORE_HOUR_END))


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _ns_of(interval: timedelta) -> int:
    return int(interval.total_seconds()) * 10**9


def _dated_points(data: Any, start_ns: int, at_ns: int, last: dict[tuple[object, ...], float]) -> list[Any]:
    """Each metric of the collected data with the points that changed since the last hour, dated ``at_ns``
    and started ``start_ns`` (one start per series for the whole month: one cumulative series each)."""
    metrics = []
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = []
                for point in metric.data.data_points:
                    key = (metric.name, *sorted((point.attributes or {}).items()))
                    value = float(getattr(point, "value", None) or getattr(point, "count", 0))
                    if last.get(key) == value:
                        continue
                    last[key] = value
                    points.append(replace(point, start_time_unix_nano=start_ns, time_unix_nano=at_ns, exemplars=[]))
                if points:
                    metrics.append((resource_metrics, scope_metrics, replace(metric, data=replace(
                        metric.data, data_points=points))))  # fmt: skip
    return metrics


def _dated_spans(spans: Sequence[Any], hour_start_ns: int) -> list[Any]:
    """The hour's spans, spread evenly over the hour (each keeps its duration and its events' offsets)."""
    from opentelemetry.sdk.trace import Event, ReadableSpan

    dated = []
    for index, span in enumerate(spans):
        shift = hour_start_ns + (2 * index + 1) * 1800 * 10**9 // len(spans) - span.start_time
        events = [Event(e.name, e.attributes, e.timestamp + shift) for e in span.events]
        dated.append(ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=span.attributes, events=events, links=span.links, kind=span.kind, status=span.status,
            start_time=span.start_time + shift, end_time=(span.end_time or span.start_time) + shift,
            instrumentation_scope=span.instrumentation_scope,
        ))  # fmt: skip
    return dated


def _metrics_data(dated: list[tuple[Any, Any, Any]]) -> Any:
    """One export of a day: every hour's points of a metric under that metric (the reader's structure)."""
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

    resources = {id(resource_metrics.resource): resource_metrics for resource_metrics, _, _ in dated}
    if len(resources) > 1:  # one MeterProvider: one resource
        raise DemoError(f"the history has {len(resources)} resources, expected one")
    scopes: dict[tuple[str, str | None], Any] = {}
    merged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for _resource_metrics, scope_metrics, hour_metric in dated:
        scope = (scope_metrics.scope.name, scope_metrics.scope.version)
        scopes.setdefault(scope, scope_metrics)
        metrics = merged.setdefault(scope, {})
        earlier = metrics.get(hour_metric.name)
        points = [*(earlier.data.data_points if earlier is not None else ()), *hour_metric.data.data_points]
        metrics[hour_metric.name] = replace(hour_metric, data=replace(hour_metric.data, data_points=points))
    scope_metrics = [ScopeMetrics(scopes[scope].scope, list(metrics.values()), scopes[scope].schema_url)
                     for scope, metrics in merged.items()]  # fmt: skip
    return MetricsData([ResourceMetrics(resource.resource, scope_metrics, resource.schema_url)
                        for resource in resources.values()])  # fmt: skip


@contextmanager
def _recording(series_start: datetime, models: Path | None,
               price_clock: Callable[[], datetime]) -> Iterator[_Recorder]:  # fmt: skip
    """tokenmeter's instrumentation in this process, into in-memory readers, without quota checks, pricing each
    call at the time ``price_clock`` says (the past hour it stands for)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
    from tokenmeter.settings import Settings
    from tokenmeter.tokenizers import TokenizerRegistry

    resource = Resource.create({semconv.SERVICE_NAME: "chatchat-demo",
                                semconv.SERVICE_INSTANCE_ID: f"demo-history-{os.getpid()}"})  # fmt: skip
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    # No enforcer (past days are no current period); the hours are read and sent here, not on a timer.
    settings = Settings(
        enforcer_url=None,
        hash_key=f"demo-history-{os.getpid()}",
        usage_flush_seconds=0,
        models=models,
        stream_usage="inject",
    )  # as the live traffic (demo/run.py: _demo_settings)
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=settings,
                            registry=TokenizerRegistry(ModelCatalog.load(models)), skip_dep_check=True,
                            price_clock=price_clock)  # fmt: skip
    try:
        yield _Recorder(instrumentor, reader, spans, _ns(series_start), {})
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def backfill(endpoints: Endpoints, llm_base_url: str, days: list[HistoryDay], progress: Any | None,
             models: Path | None = None) -> int:  # fmt: skip
    """Make and send the history's calls, day by day, priced with ``models`` (a catalog file) at the hour each call
    stands for; returns the number of calls made."""
    import openai
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics.export import MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExportResult

    headers = {"authorization": f"Bearer {endpoints.otlp_token}"} if endpoints.otlp_token else None
    metric_exporter = OTLPMetricExporter(endpoint=f"{endpoints.otlp_http}/v1/metrics", headers=headers)
    span_exporter = OTLPSpanExporter(endpoint=f"{endpoints.otlp_http}/v1/traces", headers=headers)
    client = openai.OpenAI(base_url=llm_base_url, api_key="sk-demo", max_retries=0)
    task = progress.add_task("a month of history", total=len(days)) if progress is not None else None
    made = 0
    priced_at = [days[0].hour_ends[0]]  # the hour the calls being made stand for: their price is the one valid then
    with _recording(days[0].hour_ends[0] - timedelta(hours=1), models, lambda: priced_at[0]) as recorder, \
            ThreadPoolExecutor(WORKERS) as pool:  # fmt: skip
        for day in days:
            metrics, spans = [], []
            for hour_end, calls in zip(day.hour_ends, _hours(day.calls, len(day.hour_ends)), strict=True):
                # The LLM server's ledger books the call on the day it stands for (UTC; office hours in the
                # demo's Asia/Shanghai are 01:00-10:00 UTC, so an hour never straddles two UTC days).
                hour_client = client.with_options(default_headers={DAY_HEADER: hour_end.date().isoformat()})
                priced_at[0] = hour_end - timedelta(minutes=30)  # hour_done() meters the hour's calls before the next
                list(pool.map(lambda call, c=hour_client: make_call(c, call), calls))
                hour_metrics, hour_spans = recorder.hour_done(hour_end)
                metrics += hour_metrics
                spans += hour_spans
            made += len(day.calls)
            if metric_exporter.export(_metrics_data(metrics)) is not MetricExportResult.SUCCESS:
                raise DemoError(f"serve's OTLP receiver {endpoints.otlp_http} refused the history of {day.day}")
            if spans and span_exporter.export(spans) is not SpanExportResult.SUCCESS:
                raise DemoError(f"serve's OTLP receiver {endpoints.otlp_http} refused the spans of {day.day}")
            if progress is not None:
                progress.advance(task)
    metric_exporter.shutdown()
    span_exporter.shutdown()
    return made
