"""Where the embedded receiver's insert time goes: a fixed cost per insert against a cost per span.

One fresh chDB store and the receiver's own insert (``insert_payloads``: the requests'
protobuf bytes into ``otlp_traces_in``, whose view flattens them into ``otel_traces``,
whose view fills ``llm_usage``). Inserts of 1, 4, 16 and 64 SDK export requests (512
LLM-call spans each), every request inserted once (no deduplicated repeats); a
least-squares line through (spans, seconds) splits an insert into a fixed part and a
part per span. Then the planning of each ingest view's SELECT alone (``EXPLAIN PLAN``),
which ClickHouse repeats for every block an incremental materialized view processes.

    .venv/bin/python bench/ingest_insert_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ingest_throughput import SPANS_PER_REQUEST, trace_requests

from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate, render_all

BATCHES = (1, 4, 16, 64)  # requests per insert; serve's 2 writers see ~8-16 with 32 senders
INGEST_VIEWS = ("otlp_traces_in_mv", "llm_usage_mv")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def view_selects() -> dict[str, str]:
    """The SELECT of each ingest view as the migrations last define it."""
    selects: dict[str, str] = {}
    for _migration, statements in render_all(RenderOptions()):
        for statement in statements:
            for view in INGEST_VIEWS:
                if statement.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} "):
                    selects[view] = "SELECT" + statement.split(" AS\nSELECT", 1)[1]
    return selects


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares: seconds = fixed + per_span * spans."""
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - slope * mean_x, slope


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="inserts per batch size (best is kept)")
    args = parser.parse_args()

    needed = args.repeats * sum(BATCHES) + 1  # +1 warms the store up
    _log(f"building {needed * SPANS_PER_REQUEST:,} spans with the OTel SDK encoder ...")
    payloads = [decode_protobuf(Signal.TRACES, body) for body in trace_requests(needed * SPANS_PER_REQUEST)]
    with tempfile.TemporaryDirectory(prefix="tokenmeter-insert-cost-") as tmp:
        store = open_store(f"chdb://{Path(tmp) / 'chdb'}")
        migrate(store, RenderOptions())
        schema = IngestSchema.for_store(embedded=True)
        insert_payloads(store, Signal.TRACES, payloads[:1], schema)
        unused = iter(payloads[1:])
        best: dict[int, float] = {}
        points: list[tuple[int, float]] = []
        for requests in BATCHES:
            for _ in range(args.repeats):
                batch = [next(unused) for _ in range(requests)]
                started = time.perf_counter()
                insert_payloads(store, Signal.TRACES, batch, schema)
                seconds = time.perf_counter() - started
                points.append((requests * SPANS_PER_REQUEST, seconds))
                best[requests] = min(best.get(requests, seconds), seconds)
        planning = {}
        for view, select in view_selects().items():
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                store.query(f"EXPLAIN PLAN {select}")
                runs.append(time.perf_counter() - started)
            planning[view] = min(runs)
        [(stored,)] = store.query("SELECT count() FROM otel_traces").result_rows
        store.close()
    assert stored == needed * SPANS_PER_REQUEST, (stored, needed * SPANS_PER_REQUEST)

    fixed, per_span = fit_line(points)
    print(f"\none insert through otlp_traces_in -> otel_traces -> llm_usage ({stored:,} spans stored)")
    print(f"{'requests':>9}{'spans':>8}{'ms/insert':>11}{'µs/span':>9}{'fixed share':>13}")
    for requests in BATCHES:
        spans = requests * SPANS_PER_REQUEST
        seconds = best[requests]
        print(f"{requests:>9}{spans:>8}{seconds * 1e3:>11.1f}{seconds / spans * 1e6:>9.1f}"
              f"{min(fixed / seconds, 1.0):>12.0%}")  # fmt: skip
    print(f"fit: {fixed * 1e3:.1f} ms per insert + {per_span * 1e6:.2f} µs per span")
    for view, seconds in planning.items():
        print(f"planning {view}'s SELECT (EXPLAIN PLAN, once per block): {seconds * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
