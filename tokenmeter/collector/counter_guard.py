"""Screen tokenmeter's own counters in OTLP metrics requests before they are stored.

The accounting reads cumulative counter series (``tokenmeter.usage.*``, and the apps' quota
decisions) with a max-difference rule: each point is a process's running total. A point that
is not one (``+Inf``, ``NaN``, negative, beyond 2**53, at an impossible time, a delta or gauge
under a counter's name, or lower than the series' last total) is refused here with a reason;
the rest of the request is stored. The OTLP response's ``partial_success`` names what was
refused, and ``tokenmeter_receiver_rejected_points_total`` counts it.

"Lower than the last total" compares with the points this receiver accepted before (a bounded
table of recent series, in memory): a series restarts only with a new start time, so a total
that goes down within one series is a broken or forged export. A re-sent point (same time,
same total) is accepted again. Points forged *above* a series' total cannot be told from real
ones here: that is what an OTLP token is for (docs/serve.md, "Who can write usage").
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.metrics.v1 import metrics_pb2

from tokenmeter import semconv
from tokenmeter.store.counter_points import (
    EARLIEST_POINT_NANOS,
    GUARDED_COUNTERS,
    LATEST_POINT_NANOS,
    MAX_COUNTER_VALUE,
)

DEFAULT_TRACKED_SERIES: Final = 100_000  # ~27 MB (measured): every series of a large deployment's last day
MAX_FUTURE_SECONDS: Final = 86_400.0  # clock skew tolerated on a sender's point times
_NO_RECORDED_VALUE: Final = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_CUMULATIVE: Final = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_EXAMPLES_SHOWN: Final = 3

# reason -> what it means, for the partial-success message
REASONS: Final[dict[str, str]] = {
    "not_a_counter": "not a cumulative monotonic sum",
    "no_value": "no value",
    "not_finite": "not a finite number",
    "negative": "below 0",
    "too_large": f"above {MAX_COUNTER_VALUE} (2**53)",
    "bad_time": "its time is before 2000, after 2099, more than a day ahead, or before its start time",
    "decreased": "lower than the series' last total",
}


@dataclass(frozen=True)
class RejectedPoint:
    metric: str
    reason: str
    detail: str


@dataclass
class Screening:
    """What :meth:`CounterGuard.screen` refused in one request."""

    rejected: list[RejectedPoint] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.rejected)

    def by_reason(self) -> Counter[tuple[str, str]]:
        """(metric, reason) -> points."""
        return Counter((point.metric, point.reason) for point in self.rejected)

    def message(self) -> str:
        shown = "; ".join(point.detail for point in self.rejected[:_EXAMPLES_SHOWN])
        more = f"; and {self.count - _EXAMPLES_SHOWN} more" if self.count > _EXAMPLES_SHOWN else ""
        return f"{self.count} points of tokenmeter's counters were rejected: {shown}{more}"


class CounterGuard:
    """Refuses points of tokenmeter's counters that cannot be usage; remembers recent series totals."""

    def __init__(
        self,
        tracked_series: int = DEFAULT_TRACKED_SERIES,
        *,
        clock: Callable[[], float] = time.time,
        max_future_seconds: float = MAX_FUTURE_SECONDS,
    ) -> None:
        self._tracked_series = tracked_series
        self._clock = clock
        self._max_future_nanos = int(max_future_seconds * 1e9)
        self._lock = threading.Lock()
        self._last: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # series -> (time, total)
        self._scratch = metrics_pb2.NumberDataPoint()  # reused under the lock (_series_key)

    def screen(self, request: Any) -> Screening:
        """Remove the points that cannot be usage from ``request`` (an ExportMetricsServiceRequest) in place."""
        screening = Screening()
        latest_allowed = min(LATEST_POINT_NANOS, int(self._clock() * 1e9) + self._max_future_nanos)
        with self._lock:
            for resource_metrics in request.resource_metrics:
                resource_key: bytes | None = None
                for scope_metrics in resource_metrics.scope_metrics:
                    metrics = scope_metrics.metrics
                    for index in range(len(metrics) - 1, -1, -1):
                        metric = metrics[index]
                        if metric.name not in GUARDED_COUNTERS:
                            continue
                        if resource_key is None:
                            resource_key = _resource_key(resource_metrics.resource)
                        if not _is_cumulative_counter(metric):
                            for _point in _points(metric):
                                screening.rejected.append(_rejected(metric.name, "not_a_counter", None))
                            del metrics[index]
                            continue
                        self._screen_points(metric, resource_key, latest_allowed, screening)
        return screening

    def _screen_points(self, metric: Any, resource_key: bytes, latest_allowed: int, screening: Screening) -> None:
        # One loop with its lookups bound locally: this runs for every counter point on the event loop
        # (bench/counter_guard_cost.py).
        points = metric.sum.data_points
        series_prefix = hashlib.blake2b(metric.name.encode() + b"\0" + resource_key, digest_size=16)
        scratch, clear = self._scratch, self._scratch.ClearField
        refused: list[tuple[Any, str, float]] = []
        for point in points:
            reason, value = _value_problem(point)
            if reason is None:
                moment = point.time_unix_nano
                if not EARLIEST_POINT_NANOS <= moment < latest_allowed or point.start_time_unix_nano > moment:
                    reason = "bad_time"
                else:
                    reason = self._follow(_series_key(series_prefix, point, scratch, clear), moment, value)
            if reason is not None:
                refused.append((point, reason, value))
        if refused:
            screening.rejected += [_rejected(metric.name, reason, point, value) for point, reason, value in refused]
            refused_ids = {id(point) for point, _, _ in refused}
            kept = [_copy(point) for point in points if id(point) not in refused_ids]
            del points[:]
            points.extend(kept)

    def _follow(self, series: bytes, moment: int, total: float) -> str | None:
        """ "decreased" when ``total`` at ``moment`` is not a running total of the series; else remember it."""
        last = self._last.get(series)
        if last is not None:
            last_time, last_total = last
            if (moment > last_time and total < last_total) or (moment <= last_time and total > last_total):
                return "decreased"
            if moment <= last_time:  # a re-sent or older point: nothing new to remember
                self._last.move_to_end(series)
                return None
        self._last[series] = (moment, total)
        self._last.move_to_end(series)
        if len(self._last) > self._tracked_series:
            self._last.popitem(last=False)
        return None


def _value_problem(point: Any) -> tuple[str | None, float]:
    kind = point.WhichOneof("value")
    if kind is None or point.flags & _NO_RECORDED_VALUE:
        return "no_value", math.nan
    if kind == "as_int":  # compared as an integer: 2**53 + 1 becomes 2**53 as a float
        number = point.as_int
        if number > MAX_COUNTER_VALUE:
            return "too_large", float(number)
    value = float(point.as_int) if kind == "as_int" else point.as_double
    if not math.isfinite(value):
        return "not_finite", value
    if value < 0:
        return "negative", value
    if value > MAX_COUNTER_VALUE:
        return "too_large", value
    return None, value


def _is_cumulative_counter(metric: Any) -> bool:
    return (
        metric.WhichOneof("data") == "sum"
        and metric.sum.aggregation_temporality == _CUMULATIVE
        and metric.sum.is_monotonic
    )


def _points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind is not None else ()


def _resource_key(resource: Any) -> bytes:
    # The store's series identity: service.name and service.instance.id of the resource.
    wanted = {semconv.SERVICE_NAME: b"", semconv.SERVICE_INSTANCE_ID: b""}
    for attribute in resource.attributes:
        if attribute.key in wanted:
            wanted[attribute.key] = attribute.value.SerializeToString()
    return hashlib.blake2b(b"\0".join(wanted.values()), digest_size=16).digest()


def _series_key(prefix: Any, point: Any, scratch: Any, clear: Callable[[str], None]) -> bytes:
    """The point's series: ``prefix`` (metric and resource) with its start time and attributes.

    Hashed from the point serialized without the fields that change between exports (time,
    value, exemplars, flags), after one copy into ``scratch``: 4x faster than hashing attribute by
    attribute. Attributes keep the sender's order; the store sorts them, so one series sent in two
    orders is two here: a check missed, never a wrong refusal.
    """
    scratch.CopyFrom(point)
    clear("time_unix_nano")
    clear("value")
    clear("exemplars")
    clear("flags")
    digest = prefix.copy()
    digest.update(scratch.SerializeToString())
    return bytes(digest.digest())


def _rejected(metric: str, reason: str, point: Any, value: float | None = None) -> RejectedPoint:
    where = ""
    if point is not None:
        attributes = ", ".join(f"{attribute.key}={_short(attribute.value)}" for attribute in list(point.attributes)[:4])
        where = f" {{{attributes}}}" if attributes else ""
    shown = "" if value is None or reason == "no_value" else f" value {value:g}"
    return RejectedPoint(metric, reason, f"{metric}{where}{shown}: {REASONS[reason]}")


def _short(value: Any) -> str:
    kind = value.WhichOneof("value")
    text = str(getattr(value, kind)) if kind is not None else ""
    return text if len(text) <= 40 else text[:37] + "..."


def _copy(point: Any) -> Any:
    copied = type(point)()
    copied.CopyFrom(point)
    return copied
