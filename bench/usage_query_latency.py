"""Latency of one subject's month-to-date usage query at 10 million usage rows (chDB).

The enforcer asks, before an LLM call, how much one user (and their department) used this
month. That is `period_usage(client, month_start, next_month_start, by, subject)`: a user's
question reads `usage_counter_minutely` (keyed by user), a department's month the
day-level `usage_counter_daily` (keyed by department). This script builds a store whose counter rows look like a month
of a busy deployment, goes through the real ingest path (rows into `otel_metrics_sum`, the
materialized views fill the accounting tables), then times the question per user and per
department, side by side with the same question answered from the raw `otel_metrics_sum`
table, and checks that both give the same numbers.

Shape (defaults): 5,000 users in 50 departments, a new process (series) per user and day,
4 counters each (input/output tokens, calls, cost), ~17 active minutes per series and day,
30 days: 10.2 million rows in usage_counter_minutely.

    .venv/bin/python bench/usage_query_latency.py [--rows 10000000] [--repeat 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate
from tokenmeter.store.usage_queries import period_usage

USERS = 5000
DEPARTMENTS = 50
DAYS = 30
METRICS = 4  # input tokens, output tokens, calls, cost
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)

# One day of counter points, generated inside ClickHouse: point n is (user, metric, minute).
# Values are cumulative per series: minute m of the day carries (m + 1) * per-minute usage.
_DAY_INSERT = """
INSERT INTO otel_metrics_sum (ResourceAttributes, ServiceName, MetricName, MetricUnit, Attributes,
                              StartTimeUnix, TimeUnix, Value, AggregationTemporality, IsMonotonic)
SELECT
    map('service.name', 'chatchat', 'service.instance.id', concat('i-', toString(user), '-', toString({day:UInt32}))),
    'chatchat',
    ['tokenmeter.usage.tokens', 'tokenmeter.usage.tokens', 'tokenmeter.usage.calls',
     'tokenmeter.usage.cost'][metric + 1],
    '',
    mapFilter((k, v) -> v != '', map(
        'enduser.id', concat('user-', toString(user)),
        'tokenmeter.department', concat('dept-', toString(user % {departments:UInt32})),
        'tokenmeter.app', 'chatchat',
        'gen_ai.operation.name', 'chat',
        'gen_ai.provider.name', 'openai',
        'gen_ai.request.model', ['qwen2.5-7b-instruct', 'deepseek-chat', 'gpt-4o'][user % 3 + 1],
        'gen_ai.token.type', ['input', 'output', '', ''][metric + 1],
        'tokenmeter.cost.currency', if(metric = 3, 'CNY', ''),
        'tokenmeter.cost.virtual', if(metric = 3, if(user % 3 = 0, 'true', 'false'), ''))),
    toDateTime64({day_start:DateTime('UTC')}, 9, 'UTC'),
    toDateTime64({day_start:DateTime('UTC')} + (user % 600) * 60 + minute * 60, 9, 'UTC') AS time_unix,
    toFloat64((minute + 1) * (1 + (user * 7 + metric * 13) % 97) * if(metric = 3, 1000, 1)),
    2,
    true
FROM (
    SELECT number % {users:UInt32} AS user,
           intDiv(number, {users:UInt32}) % 4 AS metric,
           intDiv(number, {users:UInt32} * 4) AS minute
    FROM numbers({points:UInt64})
)
ORDER BY time_unix
"""

# The same question without the accounting tables: straight from the raw points.
_RAW_SQL = """
SELECT metric, toInt64(sum(used)) FROM (
    SELECT any(MetricName) AS metric,
           maxIf(Value, TimeUnix < {end:DateTime64(9, 'UTC')}) - maxIf(Value, TimeUnix < {start:DateTime64(9, 'UTC')})
               AS used
    FROM otel_metrics_sum
    WHERE MetricName LIKE 'tokenmeter.usage.%' AND IsMonotonic AND AggregationTemporality = 2
      AND Attributes[{key:String}] = {subject:String} AND TimeUnix < {end:DateTime64(9, 'UTC')}
    GROUP BY cityHash64(MetricName, ServiceName, ResourceAttributes['service.instance.id'],
                        toString(mapSort(Attributes)), toUnixTimestamp64Nano(StartTimeUnix))
)
GROUP BY metric
"""


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build(client: Any, rows: int) -> None:
    per_day = rows // DAYS
    minutes = max(1, -(-per_day // (USERS * METRICS)))  # ceil
    points = USERS * METRICS * minutes
    started = time.perf_counter()
    for day in range(DAYS):
        day_start = MONTH_START + timedelta(days=day)
        client.command(_DAY_INSERT, parameters={
            "day": day, "day_start": day_start.strftime("%Y-%m-%d %H:%M:%S"), "users": USERS,
            "departments": DEPARTMENTS, "points": points,
        })  # fmt: skip
        _log(f"  day {day + 1}/{DAYS}: {points * (day + 1):,} points ({time.perf_counter() - started:.0f} s)")


def open_month_store(path: Path, rows: int) -> Any:
    """The store at ``path``, built with about ``rows`` counter rows unless it has them already."""
    client = open_store(f"chdb://{path}")
    migrate(client, RenderOptions(raw_ttl_days=0))
    [(existing,)] = client.query("SELECT count() FROM usage_counter_minutely").result_rows
    if existing < rows * 0.9:
        _log(f"building ~{rows:,} counter rows through otel_metrics_sum and its views ...")
        build(client, rows)
    return client


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    run()  # warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.95), pick(0.99)


def add_month_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--rows and --keep: what open_month_store builds, and where (this bench and dashboard_panels.py)."""
    parser.add_argument("--rows", type=int, default=10_000_000, help="usage_counter_minutely rows to build")
    parser.add_argument("--keep", type=Path, help="build the store here and reuse it on the next run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_month_store_arguments(parser)
    parser.add_argument("--repeat", type=int, default=200, help="timed queries per kind")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tokenmeter-query-") as tmp:
        path = args.keep or Path(tmp) / "chdb"
        client = open_month_store(path, args.rows)
        [(minutely,)] = client.query("SELECT count() FROM usage_counter_minutely").result_rows
        [(raw,)] = client.query("SELECT count() FROM otel_metrics_sum").result_rows
        [(daily,)] = client.query("SELECT count() FROM usage_counter_daily").result_rows
        [(parts,)] = client.query(
            "SELECT count() FROM system.parts WHERE active AND table = 'usage_counter_minutely'"
        ).result_rows
        _log(
            f"usage_counter_minutely: {minutely:,} rows in {parts} parts; usage_counter_daily: {daily:,} rows; "
            f"otel_metrics_sum: {raw:,} rows"
        )

        rng = random.Random(3)
        users = [f"user-{rng.randrange(USERS)}" for _ in range(args.repeat)]
        departments = [f"dept-{rng.randrange(DEPARTMENTS)}" for _ in range(args.repeat)]
        checks = [*((user, "user") for user in users[:5]), *((dept, "department") for dept in departments[:5])]
        for subject, by in checks:
            [usage] = period_usage(client, MONTH_START, MONTH_END, by, subject)  # type: ignore[arg-type]
            key = "enduser.id" if by == "user" else "tokenmeter.department"
            expected = dict(client.query(_RAW_SQL, parameters={
                "start": MONTH_START.strftime("%Y-%m-%d %H:%M:%S"), "end": MONTH_END.strftime("%Y-%m-%d %H:%M:%S"),
                "key": key, "subject": subject}).result_rows)  # fmt: skip
            got = {
                "tokenmeter.usage.tokens": usage.input_tokens + usage.output_tokens,
                "tokenmeter.usage.calls": usage.calls,
                "tokenmeter.usage.cost": sum(int(c.amount * 10**9) for c in usage.costs),
            }
            if got != expected:
                _log(f"MISMATCH for {by} {subject}: {got} != {expected}")
                return 1
        _log("tokens, calls and cost of 5 users and 5 departments agree with the raw-table computation")

        cycle = {"user": iter(users * 2), "department": iter(departments * 2)}
        results = {}
        for by in ("user", "department"):
            results[f"period_usage by {by}"] = timed(
                lambda by=by: period_usage(client, MONTH_START, MONTH_END, by, next(cycle[by])), args.repeat
            )
        raw_repeat = max(5, args.repeat // 20)
        for by, key in (("user", "enduser.id"), ("department", "tokenmeter.department")):
            subjects = iter((users if by == "user" else departments) * 2)
            results[f"raw otel_metrics_sum by {by}"] = timed(lambda key=key, subjects=subjects: client.query(
                _RAW_SQL, parameters={"start": MONTH_START.strftime("%Y-%m-%d %H:%M:%S"),
                                      "end": MONTH_END.strftime("%Y-%m-%d %H:%M:%S"), "key": key,
                                      "subject": next(subjects)}), raw_repeat)  # fmt: skip
        client.close()

    print(f"\none subject's month-to-date usage, {minutely:,} counter rows (load avg {os.getloadavg()[0]:.2f})")
    print(f"{'query':<36}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'vs raw p50':>12}")
    for by in ("user", "department"):
        fast, slow = results[f"period_usage by {by}"], results[f"raw otel_metrics_sum by {by}"]
        p50, p95, p99 = percentiles(fast)
        print(f"{'period_usage by ' + by:<36}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}"
              f"{statistics.median(slow) / p50:>11.0f}x")  # fmt: skip
        r50, r95, r99 = percentiles(slow)
        print(f"{'raw otel_metrics_sum by ' + by:<36}{r50:>9.1f}{r95:>9.1f}{r99:>9.1f}{'1x':>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
