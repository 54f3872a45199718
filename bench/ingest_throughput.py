"""Ingest throughput of `tokenmeter serve` into chDB against a raw chDB insert of the same rows.

Side by side in one run:

- raw:      the rows the receiver produces (fetched back from its store), inserted with
            clickhouse-connect into a fresh chDB store with the same schema and views,
            in 10,000-row batches: the engine's own rate for these rows.
- receiver: a real `tokenmeter serve` subprocess; senders post the SDK's serialized
            OTLP requests (512 spans each, as the BatchSpanProcessor sends them) over
            OTLP/HTTP and OTLP/gRPC with several connections; a request counts when it
            is acknowledged, which the receiver does only after the write.

Spans look like tokenmeter's LLM-call spans (23 attributes); metric points like its
usage counters (7 attributes). Prints spans/s, points/s, receiver/raw ratios and serve's CPU
time per row (Linux /proc).

    .venv/bin/python bench/ingest_throughput.py [--spans 600000] [--points 200000] [--senders 32]
        [--flush-interval 0.05]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tokenmeter.collector.ingest_queue import without_block_deduplication
from tokenmeter.collector.limits import DEFAULT_FLUSH_INTERVAL, DEFAULT_WRITERS
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, migrate

SPANS_PER_REQUEST = 512
RAW_BATCH_ROWS = 10_000
TRACE_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def trace_requests(total: int) -> list[bytes]:
    """Serialized ExportTraceServiceRequests of LLM-call spans, made by the SDK's own encoder."""
    rng = random.Random(7)
    requests: list[bytes] = []
    resource = Resource.create({"service.name": "chatchat", "service.instance.id": "bench"})
    while len(requests) * SPANS_PER_REQUEST < total:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("tokenmeter", "0.1.0")
        for i in range(SPANS_PER_REQUEST):
            user = rng.randrange(5000)
            with tracer.start_as_current_span("chat qwen2.5-7b-instruct", kind=SpanKind.CLIENT) as span:
                span.set_attributes({
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "qwen2.5-7b-instruct", "gen_ai.response.model": "qwen2.5-7b-instruct",
                    "gen_ai.response.id": f"chatcmpl-{i}", "gen_ai.usage.input_tokens": rng.randint(1, 5000),
                    "gen_ai.usage.output_tokens": rng.randint(1, 900), "enduser.id": f"user{user}",
                    "tokenmeter.department": f"dept{user % 50}", "tokenmeter.app": "chatchat",
                    "gen_ai.conversation.id": f"conv-{rng.randrange(10**9)}", "tokenmeter.usage.source": "server",
                    "tokenmeter.cost": "0.000123", "tokenmeter.cost.currency": "CNY", "tokenmeter.cost.virtual": True,
                    "tokenmeter.cost.unpriced": False, "tokenmeter.prompt.hash": f"{rng.getrandbits(256):064x}",
                    "tokenmeter.completion.hash": f"{rng.getrandbits(256):064x}", "server.address": "127.0.0.1",
                    "server.port": 9997, "gen_ai.request.temperature": 0.7,
                    "gen_ai.response.finish_reasons": ("stop",),
                })  # fmt: skip
        requests.append(encode_spans(exporter.get_finished_spans()).SerializeToString())
    return requests


def metric_requests(total: int, per_request: int = 2000) -> list[bytes]:
    """Serialized ExportMetricsServiceRequests of cumulative usage counter points (one per series)."""
    requests: list[bytes] = []
    made = 0
    while made < total:
        reader = InMemoryMetricReader()
        provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "chatchat", "service.instance.id": f"bench-{made}"}),
        )
        counter = provider.get_meter("tokenmeter").create_counter("tokenmeter.usage.tokens", unit="{token}")
        for series in range(per_request):
            counter.add(series + 1, {"enduser.id": f"user{series}", "tokenmeter.department": f"dept{series % 50}",
                                     "tokenmeter.app": "chatchat", "gen_ai.operation.name": "chat",
                                     "gen_ai.provider.name": "openai", "gen_ai.request.model": "qwen2.5-7b-instruct",
                                     "gen_ai.token.type": "input"})  # fmt: skip
        data = reader.get_metrics_data()
        assert data is not None
        requests.append(encode_metrics(data).SerializeToString())
        made += per_request
    return requests


def start_serve(data_dir: Path, flush_interval: float, writers: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {**os.environ, "XDG_DATA_HOME": str(data_dir / "xdg")}
    args = [sys.executable, "-m", "tokenmeter.cli", "serve", "--clickhouse-url", f"chdb://{data_dir / 'chdb'}",
            "--otlp-grpc-port", "0", "--otlp-http-port", "0", "--api-port", "0",
            "--flush-interval", str(flush_interval), "--writers", str(writers)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())


def stop_serve(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(120)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send_all(bodies: list[bytes], send: Callable[[bytes], None], senders: int) -> float:
    """Seconds until every request was acknowledged (= written)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(send, bodies))
    return time.perf_counter() - started


def http_sender(base: str, signal: str) -> Callable[[bytes], None]:
    # http.client, not httpx: the sender shares the 2 cores with serve and must stay cheap.
    host, port = base.removeprefix("http://").rsplit(":", 1)
    local = threading.local()

    def send(body: bytes) -> None:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        while True:
            connection.request("POST", f"/v1/{signal}", body=body,
                               headers={"content-type": "application/x-protobuf"})  # fmt: skip
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            if response.status != 429:
                raise RuntimeError(f"receiver answered {response.status}")
            time.sleep(float(response.getheader("retry-after", "1")))

    return send


def grpc_sender(address: str, method: str) -> Callable[[bytes], None]:
    local = threading.local()

    def send(body: bytes) -> None:
        call = getattr(local, "call", None)
        if call is None:
            channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
            call = local.call = channel.unary_unary(method)
        call(body, timeout=60)

    return send


def raw_insert_rate(rows_source: Path, table: str, raw_dir: Path) -> tuple[float, int]:
    """Rows/s of clickhouse-connect inserting the same rows into a fresh store with the same schema."""
    source = open_store(f"chdb://{rows_source}")
    columns = [name for (name,) in source.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}"
        " AND default_kind = '' ORDER BY position", parameters={"t": table}).result_rows]  # fmt: skip
    quoted = ", ".join(f"`{name}`" for name in columns)
    rows = source.query(f"SELECT {quoted} FROM {table} ORDER BY {columns[0]}").result_rows
    source.close()
    target = open_store(f"chdb://{raw_dir}")
    migrate(target, RenderOptions())
    same_as_receiver = without_block_deduplication(target)  # a like-for-like baseline
    started = time.perf_counter()
    for offset in range(0, len(rows), RAW_BATCH_ROWS):
        target.insert(table, rows[offset : offset + RAW_BATCH_ROWS], column_names=columns, settings=same_as_receiver)
    elapsed = time.perf_counter() - started
    [(stored,)] = target.query(f"SELECT count() FROM {table}").result_rows
    target.close()
    assert stored == len(rows), (stored, len(rows))
    return len(rows) / elapsed, len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # half over each transport, ~5 s of load each: shorter phases are dominated by warm-up and by when merges fall
    parser.add_argument("--spans", type=int, default=600_000)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument(
        "--senders", type=int, default=32, help="concurrent connections per transport (apps exporting at once)"
    )
    parser.add_argument("--flush-interval", type=float, default=DEFAULT_FLUSH_INTERVAL, help="serve's --flush-interval")
    parser.add_argument("--writers", type=int, default=DEFAULT_WRITERS, help="serve's --writers")
    args = parser.parse_args()

    _log(f"building {args.spans:,} spans and {args.points:,} metric points with the OTel SDK encoders ...")
    traces = trace_requests(args.spans)
    metrics = metric_requests(args.points)
    spans = len(traces) * SPANS_PER_REQUEST
    results: dict[str, float] = {}
    cpu_per_row: dict[str, float] = {}  # serve's CPU seconds per row while a phase ran
    with tempfile.TemporaryDirectory(prefix="tokenmeter-ingest-") as tmp:
        work = Path(tmp)
        process, info = start_serve(work / "serve", args.flush_interval, args.writers)
        try:
            half = len(traces) // 2
            phases = (
                ("receiver_http_spans", "spans over OTLP/HTTP", traces[:half], SPANS_PER_REQUEST,
                 http_sender(info["otlp_http"], "traces")),
                ("receiver_grpc_spans", "spans over OTLP/gRPC", traces[half:], SPANS_PER_REQUEST,
                 grpc_sender(info["otlp_grpc"], TRACE_METHOD)),
                ("receiver_points", "usage counter points over OTLP/gRPC", metrics, 2000,
                 grpc_sender(info["otlp_grpc"], METRICS_METHOD)),
            )  # fmt: skip
            for key, what, bodies, rows_per_request, send in phases:
                _log(f"receiver: {len(bodies) * rows_per_request:,} {what}, {args.senders} senders ...")
                cpu_before = cpu_seconds(process.pid)
                seconds = send_all(bodies, send, args.senders)
                results[key] = len(bodies) * rows_per_request / seconds
                cpu_per_row[key] = (cpu_seconds(process.pid) - cpu_before) / (len(bodies) * rows_per_request)
            token = (work / "serve" / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()
            stats = httpx.get(f"{info['api']}/metrics", headers={"authorization": f"Bearer {token}"},
                              timeout=10).text.splitlines()  # fmt: skip
            write = {line.split()[0]: float(line.split()[1]) for line in stats if "write_seconds_" in line}
            writes = write["tokenmeter_receiver_write_seconds_count"]
            _log(
                f"receiver wrote in {writes:.0f} inserts, {write['tokenmeter_receiver_write_seconds_sum']:.1f} s "
                f"inside inserts"
            )
        finally:
            stop_serve(process)
        _log("raw: the same rows through clickhouse-connect insert into a fresh chDB store ...")
        results["raw_spans"], stored_spans = raw_insert_rate(work / "serve" / "chdb", "otel_traces", work / "raw")
        assert stored_spans == spans, f"receiver stored {stored_spans} spans of {spans}"
        results["raw_points"], stored_points = raw_insert_rate(work / "serve" / "chdb", "otel_metrics_sum",
                                                               work / "raw2")  # fmt: skip
        assert stored_points == len(metrics) * 2000

    load = os.getloadavg()[0]
    print(f"\ningest into chDB, {spans:,} spans and {len(metrics) * 2000:,} points (load avg {load:.2f})")
    # serve CPU: all of serve's threads while the phase ran, merges of earlier phases included
    print(f"{'path':<34}{'rows/s':>12}{'vs raw':>10}{'serve CPU µs/row':>18}")
    print(f"{'raw insert, otel_traces':<34}{results['raw_spans']:>12,.0f}{'1.00x':>10}")
    for key, label in (("receiver_http_spans", "receiver OTLP/HTTP spans"),
                       ("receiver_grpc_spans", "receiver OTLP/gRPC spans")):  # fmt: skip
        print(f"{label:<34}{results[key]:>12,.0f}{results[key] / results['raw_spans']:>9.2f}x"
              f"{cpu_per_row[key] * 1e6:>18.1f}")  # fmt: skip
    print(f"{'raw insert, otel_metrics_sum':<34}{results['raw_points']:>12,.0f}{'1.00x':>10}")
    ratio = results["receiver_points"] / results["raw_points"]
    print(f"{'receiver OTLP/gRPC points':<34}{results['receiver_points']:>12,.0f}{ratio:>9.2f}x"
          f"{cpu_per_row['receiver_points'] * 1e6:>18.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
