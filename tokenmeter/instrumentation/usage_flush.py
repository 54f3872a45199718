"""Export the usage counters soon after calls finish, not only every OTEL_METRIC_EXPORT_INTERVAL.

The counters live in the process until an export. A process that ends without a
chance to flush (SIGKILL, the OOM killer, a launcher that kills its children) loses
everything counted since the last periodic export: up to a whole interval of calls,
10 s or 60 s of a busy server's bill. So after a call's usage is recorded, a
background thread exports the counters ``delay_s`` later. Calls that finish in the
meantime ride along in that export, and the next one waits another ``delay_s``, so
while calls keep finishing there is at most one export per ``delay_s``, and a call is
exported at most ``delay_s`` (plus the export itself) after it ended. An idle process
exports nothing extra.

Nothing here runs on the caller's path: ``notify()`` sets a flag under a lock. An
export that fails is logged once and retried by the next one (the counters are
cumulative, so any later export carries the same totals).

A cumulative export carries every series the process ever counted (each user, model and
token type), so a flush a second would send that whole set a second: 40,000 points/s for
5,000 users, more than a collector on two cores takes in. tokenmeter's own accounting
pipeline therefore wraps its exporters in :class:`ChangedSeriesExporter`: a flush sends only
the series whose totals changed since they were last exported (about four per call), the
periodic export still sends them all. Both are exact under the counter rule (a series'
largest total), which a point left out because it did not change cannot alter.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any

from tokenmeter.instrumentation.safety import contained, warn_once

FlushFunction = Callable[[], bool]


class UsageFlusher:
    """Calls ``flush`` ``delay_s`` after the first ``notify()`` since the last flush."""

    def __init__(self, flush: FlushFunction, delay_s: float) -> None:
        if delay_s <= 0:
            raise ValueError("UsageFlusher needs a delay above 0 (0 means: create none)")
        self._flush = flush
        self._delay_s = delay_s
        self._condition = threading.Condition()
        self._pending = False
        self._closed = False
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            # A forked worker inherits the flag and lock but not the thread; a weak
            # reference so flushers of past instrument() calls can still be freed.
            os.register_at_fork(after_in_child=functools.partial(_reset_after_fork, weakref.ref(self)))

    def notify(self) -> None:
        """Usage was recorded: export it within ``delay_s``. Never blocks on an export."""
        with self._condition:
            if self._closed:
                return
            self._pending = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tokenmeter-usage-flush", daemon=True)
                self._thread.start()
            self._condition.notify()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (its owner flushes once more itself when it shuts down)."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending or self._closed)
                # Let the calls finishing now join this export: one export per delay at most.
                self._condition.wait_for(lambda: self._closed, timeout=self._delay_s)
                if self._closed:
                    return
                self._pending = False
            self._export()

    def _export(self) -> None:
        with contained("usage counter flush"):
            if self._flush() is False:
                warn_once(
                    "usage-flush-incomplete",
                    "tokenmeter: exporting the usage counters failed or timed out; the next export "
                    "carries the same totals (counters are cumulative)",
                )

    def _after_fork(self) -> None:
        self._condition = threading.Condition()
        self._thread = None


def _reset_after_fork(flusher: weakref.ref[UsageFlusher]) -> None:
    instance = flusher()
    if instance is not None:
        instance._after_fork()


def usage_flusher(provider: object, delay_s: float, timeout_s: float = 10.0) -> UsageFlusher | None:
    """A flusher of ``provider`` (an SDK MeterProvider), or None when off or the provider cannot flush.

    The API's no-op and proxy providers have no ``force_flush``: nothing to export.
    """
    force_flush = getattr(provider, "force_flush", None)
    if delay_s <= 0 or force_flush is None:
        return None
    timeout_millis = timeout_s * 1000

    def flush() -> bool:
        with flushing():
            return force_flush(timeout_millis) is not False

    return UsageFlusher(flush, delay_s)


# True while this thread runs a debounced flush: the export it triggers carries only changed series.
_FLUSHING: ContextVar[bool] = ContextVar("tokenmeter_usage_flushing", default=False)


@contextlib.contextmanager
def flushing() -> Iterator[None]:
    token = _FLUSHING.set(True)
    try:
        yield
    finally:
        _FLUSHING.reset(token)


def changed_series_exporter(exporter: Any) -> Any:
    """``exporter`` wrapped so that debounced flushes send only changed series (an SDK MetricExporter)."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

    class ChangedSeriesExporter(MetricExporter):  # type: ignore[misc]
        """Periodic exports pass through whole; a flush's export keeps only the sum points whose value
        differs from the one last exported for their series. What was exported is remembered only
        after the wrapped exporter succeeded, so a failed export's points go again next time."""

        def __init__(self) -> None:
            # The reader takes its temporality and aggregation from its exporter's attributes.
            super().__init__(preferred_temporality=exporter._preferred_temporality,
                             preferred_aggregation=exporter._preferred_aggregation)  # fmt: skip
            self.wrapped = exporter
            self._lock = threading.Lock()
            self._exported: dict[Hashable, float] = {}  # series -> value last exported

        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
            data = self._changed(metrics_data) if _FLUSHING.get() else metrics_data
            if data is None:
                return MetricExportResult.SUCCESS
            result = exporter.export(data, timeout_millis=timeout_millis, **kwargs)
            if result is MetricExportResult.SUCCESS:
                with self._lock:
                    for key, value in _sum_points(data):
                        self._exported[key] = value
            return result

        def _changed(self, metrics_data: MetricsData) -> MetricsData | None:
            with self._lock:
                exported = dict(self._exported)
            return _filter_sum_points(metrics_data, lambda key, value: exported.get(key) != value)

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return bool(exporter.force_flush(timeout_millis=timeout_millis))

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    return ChangedSeriesExporter()


def _series_key(metric_name: str, point: Any) -> Hashable:
    return metric_name, point.start_time_unix_nano, frozenset(point.attributes.items())


def _sum_points(metrics_data: Any) -> Iterator[tuple[Hashable, float]]:
    from opentelemetry.sdk.metrics.export import Sum

    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if isinstance(metric.data, Sum):
                    for point in metric.data.data_points:
                        yield _series_key(metric.name, point), point.value


def _filter_sum_points(metrics_data: Any, keep: Callable[[Hashable, float], bool]) -> Any:
    """``metrics_data`` with only the sum points ``keep`` accepts; None when no point is left."""
    from dataclasses import replace

    from opentelemetry.sdk.metrics.export import Sum

    resources = []
    for resource_metrics in metrics_data.resource_metrics:
        scopes = []
        for scope_metrics in resource_metrics.scope_metrics:
            metrics = []
            for metric in scope_metrics.metrics:
                if not isinstance(metric.data, Sum):
                    metrics.append(metric)
                    continue
                points = [p for p in metric.data.data_points if keep(_series_key(metric.name, p), p.value)]
                if points:
                    metrics.append(replace(metric, data=replace(metric.data, data_points=points)))
            if metrics:
                scopes.append(replace(scope_metrics, metrics=metrics))
        if scopes:
            resources.append(replace(resource_metrics, scope_metrics=scopes))
    return replace(metrics_data, resource_metrics=resources) if resources else None
