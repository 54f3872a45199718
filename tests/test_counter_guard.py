"""The receiver's counter guard on real OTLP protobuf requests: what it refuses, what it never refuses."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, resource

from tokenmeter import semconv
from tokenmeter.collector.counter_guard import CounterGuard
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.store.counter_points import MAX_COUNTER_VALUE

NOW_S = 1_790_000_000.0  # 2026-09; the guard's clock in these tests
NOW = int(NOW_S) * 10**9
START = NOW - 3600 * 10**9


def _point(user: str, value: float | int, time_ns: int = NOW, start_ns: int = START) -> metrics_pb2.NumberDataPoint:
    data_point = metrics_pb2.NumberDataPoint(attributes=attributes({semconv.ENDUSER_ID: user}),
                                             start_time_unix_nano=start_ns, time_unix_nano=time_ns)  # fmt: skip
    if isinstance(value, float):
        data_point.as_double = value
    else:
        data_point.as_int = value
    return data_point


def _request(points: list[metrics_pb2.NumberDataPoint], name: str = semconv.METRIC_USAGE_TOKENS,
             instance: str = "i-1") -> ExportMetricsServiceRequest:  # fmt: skip
    metric = metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(
        data_points=points, aggregation_temporality=2, is_monotonic=True))  # fmt: skip
    return ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource("app", instance),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=[metric])],
    )])  # fmt: skip


def _guard(**kwargs: object) -> CounterGuard:
    return CounterGuard(clock=lambda: NOW_S, **kwargs)  # type: ignore[arg-type]


def _kept_values(request: ExportMetricsServiceRequest) -> list[float]:
    return [point.as_int or point.as_double for resource_metrics in request.resource_metrics
            for scope in resource_metrics.scope_metrics for metric in scope.metrics
            for point in metric.sum.data_points]  # fmt: skip


def test_a_clean_request_keeps_its_bytes() -> None:
    body = _request([_point("alice", 10), _point("bob", 20)]).SerializeToString()
    payload = decode_protobuf(Signal.METRICS, body, _guard())
    assert payload.protobuf is body  # nothing refused: the sender's bytes go to the store as they are
    assert (payload.items, payload.refused_items, payload.screening.count) == (2, 0, 0)  # type: ignore[union-attr]


def test_refused_points_leave_the_request_and_are_named() -> None:
    body = _request([_point("alice", 10), _point("mallory", math.inf), _point("bob", -3)]).SerializeToString()
    payload = decode_protobuf(Signal.METRICS, body, _guard())
    assert (payload.items, payload.refused_items) == (1, 2)
    stored = ExportMetricsServiceRequest.FromString(payload.protobuf)
    assert _kept_values(stored) == [10]
    assert "2 points of tokenmeter's counters were rejected" in payload.refused_reason
    assert "enduser.id=mallory} value inf: not a finite number" in payload.refused_reason
    assert "enduser.id=bob} value -3: below 0" in payload.refused_reason


def test_other_metrics_are_not_screened() -> None:
    body = _request([_point("alice", -5.0), _point("bob", math.nan)], name="app.queue.depth").SerializeToString()
    payload = decode_protobuf(Signal.METRICS, body, _guard())
    assert payload.protobuf is body and payload.refused_items == 0


def test_the_ceiling_is_two_to_the_53() -> None:
    guard = _guard()
    at_ceiling = _request([_point("alice", MAX_COUNTER_VALUE)])
    assert guard.screen(at_ceiling).count == 0
    above = _request([_point("bob", MAX_COUNTER_VALUE + 1)])
    assert [point.reason for point in guard.screen(above).rejected] == ["too_large"]


def test_a_series_that_goes_down_is_refused_but_a_resent_or_older_point_is_not() -> None:
    guard = _guard()
    assert guard.screen(_request([_point("alice", 100, NOW - 10**9)])).count == 0
    assert guard.screen(_request([_point("alice", 100, NOW - 10**9)])).count == 0  # a retry
    assert guard.screen(_request([_point("alice", 90, NOW - 2 * 10**9)])).count == 0  # an older export, late
    assert [p.reason for p in guard.screen(_request([_point("alice", 99, NOW)])).rejected] == ["decreased"]
    assert [p.reason for p in guard.screen(_request([_point("alice", 101, NOW - 5 * 10**9)])).rejected] == [
        "decreased"
    ]  # an earlier time claiming a larger total
    # a restart is a new series (new start time): from 0 again
    assert guard.screen(_request([_point("alice", 1, NOW, start_ns=NOW - 10**9)])).count == 0
    # another process (instance) is another series
    assert guard.screen(_request([_point("alice", 1)], instance="i-2")).count == 0


def test_times_out_of_range_are_refused() -> None:
    guard = _guard()
    cases = [NOW + 2 * 86400 * 10**9, 0, 2**64 - 1]
    for moment in cases:
        assert [p.reason for p in guard.screen(_request([_point("alice", 1, moment, start_ns=0)])).rejected] == [
            "bad_time"
        ], moment
    assert guard.screen(_request([_point("alice", 1, NOW + 3600 * 10**9)])).count == 0  # an hour of skew is fine


def test_tracked_series_stay_bounded() -> None:
    guard = _guard(tracked_series=3)
    for index in range(10):
        assert guard.screen(_request([_point(f"user-{index}", 5)])).count == 0
    assert len(guard._last) == 3
    # the oldest were forgotten: their next (lower) total is no longer known to be lower
    assert guard.screen(_request([_point("user-0", 1, NOW + 10**9)])).count == 0
    assert guard.screen(_request([_point("user-9", 1, NOW + 10**9)])).count == 1


# A real series: running totals that never go down, delivered with retries, duplicates and reordering.
@settings(max_examples=200, deadline=None)
@given(
    increments=st.lists(st.integers(0, 10**6), min_size=1, max_size=30),
    deliveries=st.lists(st.integers(0, 29), max_size=60),
)
def test_a_real_series_is_never_refused_however_it_is_delivered(increments: list[int], deliveries: list[int]) -> None:
    totals = [sum(increments[: index + 1]) for index in range(len(increments))]
    points = [(NOW - (len(totals) - index) * 10**9, total) for index, total in enumerate(totals)]
    order = [points[index % len(points)] for index in deliveries] + points
    guard = _guard()
    for moment, total in order:
        assert guard.screen(_request([_point("alice", total, moment)])).count == 0


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1)))
def test_a_value_is_kept_exactly_when_it_can_be_a_counter(value: float | int) -> None:
    screening = _guard().screen(_request([_point("alice", value)]))
    sane = math.isfinite(value) and 0 <= value <= MAX_COUNTER_VALUE
    assert screening.count == (0 if sane else 1)
