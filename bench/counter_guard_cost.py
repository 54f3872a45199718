"""What the receiver's counter guard adds to a metrics export request, side by side in one run.

A metrics request shaped like one export of an instrumented app: for each user, two models'
usage counters (input and output tokens, cost, calls) and the GenAI histograms (token usage,
operation duration). ``decode_protobuf`` alone against ``decode_protobuf`` with the guard,
alternating, on fresh copies of the same bytes; medians of the rounds. The guard's state is
warm (it has seen each series once), as in a running serve, so every point is compared with
its series' last total.

    .venv/bin/python bench/counter_guard_cost.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import attributes, now_ns, resource

from tokenmeter import semconv
from tokenmeter.collector.counter_guard import CounterGuard
from tokenmeter.collector.payloads import Signal, decode_protobuf

MODELS = ("qwen2.5-7b-instruct", "qwen-max")
USERS = (10, 100, 1000)


def export_request(users: int, time_ns: int, total: int) -> bytes:
    start = time_ns - 3600 * 10**9
    counters: dict[str, list[metrics_pb2.NumberDataPoint]] = {
        semconv.METRIC_USAGE_TOKENS: [], semconv.METRIC_USAGE_COST: [], semconv.METRIC_USAGE_CALLS: []}  # fmt: skip
    histograms: list[metrics_pb2.HistogramDataPoint] = []
    for user in range(users):
        for model in MODELS:
            base = {semconv.ENDUSER_ID: f"user-{user}", semconv.TM_DEPARTMENT: "研发部",
                    semconv.GEN_AI_REQUEST_MODEL: model, semconv.GEN_AI_OPERATION_NAME: "chat"}  # fmt: skip
            for token_type in (semconv.TOKEN_TYPE_INPUT, semconv.TOKEN_TYPE_OUTPUT):
                counters[semconv.METRIC_USAGE_TOKENS].append(metrics_pb2.NumberDataPoint(
                    attributes=attributes({**base, semconv.GEN_AI_TOKEN_TYPE: token_type}),
                    start_time_unix_nano=start, time_unix_nano=time_ns, as_int=total))  # fmt: skip
            for name in (semconv.METRIC_USAGE_COST, semconv.METRIC_USAGE_CALLS):
                counters[name].append(
                    metrics_pb2.NumberDataPoint(
                        attributes=attributes(base), start_time_unix_nano=start, time_unix_nano=time_ns, as_int=total
                    )
                )
            histograms.append(metrics_pb2.HistogramDataPoint(
                attributes=attributes(base), start_time_unix_nano=start, time_unix_nano=time_ns, count=3, sum=900,
                bucket_counts=[0] * 15, explicit_bounds=[float(b) for b in semconv.TOKEN_USAGE_BUCKETS]))  # fmt: skip
    metrics = [metrics_pb2.Metric(name=name, sum=metrics_pb2.Sum(data_points=points, aggregation_temporality=2,
                                                                  is_monotonic=True))
               for name, points in counters.items()]  # fmt: skip
    metrics += [metrics_pb2.Metric(name=name, histogram=metrics_pb2.Histogram(data_points=histograms,
                                                                              aggregation_temporality=2))
                for name in (semconv.METRIC_TOKEN_USAGE, semconv.METRIC_OPERATION_DURATION)]  # fmt: skip
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource("bench-app"),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(scope=InstrumentationScope(name="tokenmeter"), metrics=metrics)
                ],
            )
        ]
    )
    return request.SerializeToString()


def timed(body: bytes, guard: CounterGuard | None, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        decode_protobuf(Signal.METRICS, bytes(body), guard)
    return (time.perf_counter() - started) / repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print("| users | counter points | bytes | decode | decode + guard | added | per counter point | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for users in USERS:
        now = now_ns()
        guard = CounterGuard()
        decode_protobuf(Signal.METRICS, export_request(users, now - 10**9, 100), guard)  # series seen once
        body = export_request(users, now, 200)
        points = users * len(MODELS) * 4
        repeat = max(1, 2000 // users)
        plain, guarded = [], []
        for _ in range(args.rounds):
            plain.append(timed(body, None, repeat))
            guarded.append(timed(body, guard, repeat))
        assert decode_protobuf(Signal.METRICS, body, guard).refused_items == 0
        base, with_guard = statistics.median(plain), statistics.median(guarded)
        print(f"| {users} | {points} | {len(body):,} | {base * 1e6:,.0f} µs | {with_guard * 1e6:,.0f} µs "
              f"| {(with_guard - base) * 1e6:,.0f} µs | {(with_guard - base) / points * 1e6:.2f} µs "
              f"| {with_guard / base:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
