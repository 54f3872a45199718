"""Added per-call latency of OpenAI-SDK instrumentations vs none, side by side, and what each records for streams.

    make bench-peers        # or: .venv-peers/bin/python bench/peers_overhead.py [--calls 300] [--rounds 5]
                            #     [--cases nonstream,stream] [--sides plain,tokenmeter,...] [--json out.json]

Sides: ``plain`` (no instrumentation), ``tokenmeter``, ``otel-openai-v2`` (the official
opentelemetry-instrumentation-openai-v2), ``openlit`` and ``openllmetry`` (traceloop-sdk with
opentelemetry-instrumentation-openai). They need the peers' venv (``make .venv-peers/.installed``):
OpenLIT accepts only openai<3, so that venv has the newest openai 2.x rather than .venv's 3.x.

What is measured: wall time (perf_counter_ns) around ``client.chat.completions.create(...)`` of a
real openai client over real HTTP to ``tests/support/openai_server.py`` on 127.0.0.1; for a stream,
around create plus consuming every chunk. The prompt is a RAG-sized Chinese knowledge-base message
(about 1,200 Qwen tokens, printed), model ``qwen2.5-7b-instruct``. "Added" = a side's percentile
minus plain's for the same case in the same run. Cases:

- ``nonstream``: non-streamed calls, the server reports usage.
- ``stream``: the server reports no usage ("omit" mode); streamed calls (no stream_options) alternate
  with non-streamed ones. The stream calls' latencies are the table; the non-stream calls' p99 is
  shown beside them, and so is what each side recorded for the stream calls' tokens (span attributes
  ``gen_ai.usage.*`` / ``llm.usage.*``), next to tokenmeter's Qwen count of the prompt as ChatML and
  of the reply.

Fairness: the model servers run in this driver process (threads), never in a measured process. Each
side runs in a process of its own (a child per round and side, one block of ``--calls`` calls per
case after a short warm-up); the side order rotates every round to spread machine noise. Every side
gets the same OpenTelemetry backends, installed as the global providers before the side's setup: a
TracerProvider with one BatchSpanProcessor to an in-memory exporter, a MeterProvider with an
InMemoryMetricReader, and a LoggerProvider with a BatchLogRecordProcessor to an in-memory exporter
(events). OpenLIT and OpenLLMetry detect and reuse them; OpenLLMetry gets the in-memory exporter as
``Traceloop.init(exporter=...)`` and adds that BatchSpanProcessor itself (so it too has exactly one).

Each library runs with its DEFAULT settings:

- tokenmeter (this checkout's code, installed editable): ``tokenmeter.instrument()``; no content
  capture (HMAC hashes of prompt and reply); server usage billed, 10 % of such calls also counted
  locally (drift sample); calls without usage counted with the model's tokenizer in a background
  thread. Usage counters go to its own accounting MeterProvider, which exports nowhere here
  (OTEL_METRICS_EXPORTER unset; it logs a warning once).
- otel-openai-v2: ``OpenAIInstrumentor().instrument()``; no content capture, no events. With
  opentelemetry-util-genai 1.1b0 (the newest that 2.4b0 imports cleanly) it always takes the latest
  experimental GenAI conventions path (util-genai's TelemetryHandler), not the documented v1.30 one.
- openlit: ``openlit.init(...)``; captures prompt and reply content, emits events and metrics, and
  also auto-instruments every library it knows that is installed, httpx included, so each call
  also gets an HTTP client span. GPU and system metrics stay off (their default).
- openllmetry: ``Traceloop.init(exporter=...)``; captures content (TRACELOOP_TRACE_CONTENT
  defaults to true); metrics go to the global MeterProvider.

No network at run time: OpenLIT would fetch its pricing JSON from GitHub at init, so it gets a small
local file (``pricing_json=``); OpenLLMetry gets an in-memory exporter (so nothing goes to
api.traceloop.com) and ``TRACELOOP_TELEMETRY=false``; every child runs with HTTP(S)_PROXY pointed at
a closed port on 127.0.0.1 and NO_PROXY=127.0.0.1,localhost, so any HTTP attempt elsewhere fails at
once instead of leaving the machine, and with OTEL_*/TOKENMETER_*/TRACELOOP_*/OPENLIT_* variables
from the caller's environment removed (so defaults apply and no OTLP exporter is configured).
Checked with ``strace -f -e trace=connect``: every side connects only to 127.0.0.1.

Printed per case: the added-latency table, then raw percentiles per side and call kind with spans and
log records per call, the tokens recorded (most common value, and how many calls recorded it) and the
p99 of each block in round order (a block hit by a burst of machine noise shows up there).
The machine is small (2 cores) and may be shared: expect noise, above all in the p99 columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from openai_server import REPLY_TEXT, OpenAICompatibleServer

MODEL = "qwen2.5-7b-instruct"
MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "根据以下资料回答问题。" + "知识库段落。" * 240},
]
SIDES = ("plain", "tokenmeter", "otel-openai-v2", "openlit", "openllmetry")
CASES = ("nonstream", "stream")
WARMUP_CALLS = 20
PACKAGES = (
    "openai",
    "tokenmeter",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-openai-v2",
    "openlit",
    "traceloop-sdk",
    "opentelemetry-instrumentation-openai",
)
# Any HTTP(S) request that does not go to loopback is sent to this closed port and fails at once.
DEAD_PROXY = "http://127.0.0.1:9"
CLEARED_ENV_PREFIXES = ("OTEL_", "TOKENMETER_", "TRACELOOP_", "OPENLIT_")
INPUT_KEYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens")
# A price for OpenLIT's cost attribute (USD per 1k tokens; any number will do, it is never billed).
OPENLIT_PRICING = {"chat": {MODEL: {"promptPrice": 0.0003, "completionPrice": 0.0006}}, "embeddings": {}}


# --- the measured process: one side ----------------------------------------------------------------


@dataclass
class Backends:
    """The same in-memory OpenTelemetry backends for every side."""

    tracer_provider: Any
    span_exporter: Any
    meter_provider: Any
    metric_reader: Any
    log_exporter: Any
    logger_provider: Any


def setup_backends(span_processor: bool = True) -> Backends:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    if span_processor:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(tracer_provider)
    metric_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metric_reader])
    metrics.set_meter_provider(meter_provider)
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    set_logger_provider(logger_provider)
    return Backends(tracer_provider, span_exporter, meter_provider, metric_reader, log_exporter, logger_provider)


def setup_plain() -> Backends:
    return setup_backends()


def setup_tokenmeter() -> Backends:
    backends = setup_backends()
    import tokenmeter

    tokenmeter.instrument()
    return backends


def setup_otel_openai_v2() -> Backends:
    backends = setup_backends()
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    return backends


def setup_openlit() -> Backends:
    backends = setup_backends()
    import openlit

    pricing = Path(tempfile.mkdtemp(prefix="bench-openlit-")) / "pricing.json"
    pricing.write_text(json.dumps(OPENLIT_PRICING))
    openlit.init(pricing_json=str(pricing), collect_gpu_stats=False, collect_system_metrics=False)
    return backends


def setup_openllmetry() -> Backends:
    backends = setup_backends(span_processor=False)  # Traceloop adds its BatchSpanProcessor to the global provider
    from traceloop.sdk import Traceloop

    Traceloop.init(app_name="bench", exporter=backends.span_exporter)
    return backends


SETUPS = {
    "plain": setup_plain,
    "tokenmeter": setup_tokenmeter,
    "otel-openai-v2": setup_otel_openai_v2,
    "openlit": setup_openlit,
    "openllmetry": setup_openllmetry,
}


def make_client(base_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)


def one_call(client: Any, stream: bool) -> float:
    """Microseconds for one call; a stream is consumed to its end inside the measurement."""
    start = time.perf_counter_ns()
    if stream:
        for _chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass
    else:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    return (time.perf_counter_ns() - start) / 1e3


def call_kinds(case: str, calls: int) -> list[str]:
    if case == "nonstream":
        return ["call"] * calls
    return ["stream" if i % 2 == 0 else "call" for i in range(calls)]


def flush_all(side: str, backends: Backends) -> None:
    if side == "tokenmeter":
        import tokenmeter

        tokenmeter.flush(60)
    backends.tracer_provider.force_flush(60_000)
    backends.meter_provider.force_flush(60_000)
    backends.logger_provider.force_flush(60_000)


def usage_of(attributes: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(input, output, tokenmeter's usage source) as the span records them; None where absent."""
    found_in = next((attributes[k] for k in INPUT_KEYS if k in attributes), None)
    found_out = next((attributes[k] for k in OUTPUT_KEYS if k in attributes), None)
    return found_in, found_out, attributes.get("tokenmeter.usage.source")


def recorded_tokens(spans: list[Any], kinds: list[str]) -> dict[str, Any]:
    """What the LLM spans of each call kind recorded, matched to calls by start time."""
    llm_spans = [s for s in spans if any(k.startswith(("gen_ai.", "llm.")) for k in (s.attributes or {}))]
    if not llm_spans:
        return {"none": "no LLM spans"}
    llm_spans.sort(key=lambda s: s.start_time)
    if len(llm_spans) != len(kinds):
        return {"error": f"{len(llm_spans)} LLM spans for {len(kinds)} calls"}
    by_kind: dict[str, Counter[tuple[Any, Any, Any]]] = {}
    for span, kind in zip(llm_spans, kinds, strict=True):
        by_kind.setdefault(kind, Counter())[usage_of(dict(span.attributes or {}))] += 1
    return {kind: [[*usage, n] for usage, n in counts.most_common()] for kind, counts in by_kind.items()}


def run_case(side: str, backends: Backends, base_url: str, case: str, calls: int) -> dict[str, Any]:
    client = make_client(base_url)
    for kind in call_kinds(case, WARMUP_CALLS):
        one_call(client, kind == "stream")
    flush_all(side, backends)
    backends.span_exporter.clear()
    backends.log_exporter.clear()
    kinds = call_kinds(case, calls)
    samples: dict[str, list[float]] = {"call": [], "stream": []}
    for kind in kinds:
        samples[kind].append(one_call(client, kind == "stream"))
    flush_all(side, backends)
    spans = list(backends.span_exporter.get_finished_spans())
    logs = backends.log_exporter.get_finished_logs()
    client.close()
    return {
        "samples": samples,
        "tokens": recorded_tokens(spans, kinds),
        "spans": len(spans),
        "logs": len(logs),
        "calls": len(kinds),
        "metrics": metric_names(backends.metric_reader),
    }


def metric_names(reader: Any) -> list[str]:
    """The instruments with data on the shared MeterProvider."""
    data = reader.get_metrics_data()
    resource_metrics = data.resource_metrics if data is not None else []
    return sorted({m.name for rm in resource_metrics for sm in rm.scope_metrics for m in sm.metrics})


def child_main(args: argparse.Namespace) -> None:
    backends = SETUPS[args.child]()
    urls = json.loads(args.urls)
    results = {case: run_case(args.child, backends, urls[case], case, args.calls) for case in args.cases.split(",")}
    Path(args.out).write_text(json.dumps(results))


# --- the driver ------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_ENV_PREFIXES)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["TOKENMETER_HASH_KEY"] = "bench"
    env["TRACELOOP_TELEMETRY"] = "false"
    return env


def run_child(side: str, cases: list[str], urls: dict[str, str], calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", side, "--cases", ",".join(cases), "--calls", str(calls)]
        command += ["--urls", json.dumps(urls), "--out", str(out)]
        done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0 or not out.exists():
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"side {side} failed (exit {done.returncode})")
        return json.loads(out.read_text())


def merge_tokens(into: dict[str, Counter[tuple[Any, ...]]], tokens: dict[str, Any]) -> None:
    for kind, rows in tokens.items():
        if kind in ("error", "none"):
            into.setdefault(kind, Counter())[(rows,)] += 1
            continue
        for *usage, n in rows:
            into.setdefault(kind, Counter())[tuple(usage)] += n


def empty_result() -> dict[str, Any]:
    return {
        "samples": {"call": [], "stream": []},
        "block_p99": {"call": [], "stream": []},
        "tokens": {},
        "spans": 0,
        "logs": 0,
        "calls": 0,
        "metrics": [],
    }


def add_block(total: dict[str, Any], block: dict[str, Any]) -> None:
    for kind, samples in block["samples"].items():
        total["samples"][kind].extend(samples)
        if samples:
            total["block_p99"][kind].append(percentile(samples, 99))
    merge_tokens(total["tokens"], block["tokens"])
    for key in ("spans", "logs", "calls"):
        total[key] += block[key]
    total["metrics"] = sorted(set(total["metrics"]) | set(block["metrics"]))


def run_rounds(args: argparse.Namespace, servers: dict[str, OpenAICompatibleServer]) -> dict[str, dict[str, Any]]:
    urls = {case: server.base_url for case, server in servers.items()}
    results = {case: {side: empty_result() for side in args.sides} for case in args.cases}
    started = time.monotonic()
    for round_index in range(args.rounds):
        shift = round_index % len(args.sides)
        order = args.sides[shift:] + args.sides[:shift]
        for position, side in enumerate(order, 1):
            elapsed = time.monotonic() - started
            print(f"[{elapsed:5.0f}s] round {round_index + 1}/{args.rounds}: {side} ({position}/{len(order)})",
                  file=sys.stderr, flush=True)  # fmt: skip
            blocks = run_child(side, args.cases, urls, args.calls)
            for case, block in blocks.items():
                add_block(results[case][side], block)
            for server in servers.values():
                with server.state.lock:
                    server.state.requests.clear()
    return results


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def ratio(value: float, cheapest: float) -> str:
    return f"{value / cheapest:.2f}x" if cheapest > 0 else "n/a"


def tokens_text(tokens: dict[str, Counter[tuple[Any, ...]]], kind: str) -> str:
    """The most common recording, e.g. '1227/21 tokenizer (750/750)'; 'none' when nothing was recorded."""
    if "none" in tokens:
        return "- (no LLM spans)"
    if "error" in tokens:
        return "unmatched: " + "; ".join(usage[0] for usage in tokens["error"])
    counts = tokens.get(kind)
    if not counts:
        return "n/a"
    (usage, n), total = counts.most_common(1)[0], sum(counts.values())
    found_in, found_out, source = usage
    if found_in is None and found_out is None:
        text = "none"
    else:
        text = f"{found_in if found_in is not None else '-'}/{found_out if found_out is not None else '-'}"
        text += f" {source}" if source else ""
    return f"{text} ({n}/{total})"


def case_percentiles(results: dict[str, Any], kind: str) -> dict[str, tuple[float, float]]:
    return {
        side: (percentile(r["samples"][kind], 50), percentile(r["samples"][kind], 99)) for side, r in results.items()
    }


def print_added_table(case: str, results: dict[str, Any], kind: str) -> None:
    stats = case_percentiles(results, kind)
    plain = stats.get("plain")
    if plain is None:
        print("  (no plain side: added latency needs --sides to include plain)")
        return
    added = {side: (p50 - plain[0], p99 - plain[1]) for side, (p50, p99) in stats.items() if side != "plain"}
    cheapest50 = min((a[0] for a in added.values()), default=0.0)
    cheapest99 = min((a[1] for a in added.values()), default=0.0)
    extra = case == "stream"
    header = f"  {'side':<16}{'added p50 µs':>13}{'added p99 µs':>13}{'p50 ratio':>11}{'p99 ratio':>11}"
    header += f"{'non-stream added p99 µs':>25}  stream tokens recorded (in/out)" if extra else ""
    print(header)
    call_stats = case_percentiles(results, "call") if extra else {}
    for side, (a50, a99) in added.items():
        line = f"  {side:<16}{a50:>13.0f}{a99:>13.0f}{ratio(a50, cheapest50):>11}{ratio(a99, cheapest99):>11}"
        if extra:
            call_added = call_stats[side][1] - call_stats["plain"][1]
            line += f"{call_added:>25.0f}  {tokens_text(results[side]['tokens'], 'stream')}"
        print(line)


def print_raw(results: dict[str, Any]) -> None:
    print(f"  raw: {'side':<16}{'kind':<8}{'n':>6}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}"
          f"{'spans/call':>12}{'logs/call':>11}  {'tokens recorded (in/out)':<30}p99 of each block, µs")  # fmt: skip
    for side, r in results.items():
        for kind, samples in r["samples"].items():
            if not samples:
                continue
            per_call = (r["spans"] / r["calls"], r["logs"] / r["calls"])
            blocks = " ".join(f"{p99:.0f}" for p99 in r["block_p99"][kind])
            tokens = tokens_text(r["tokens"], kind)
            print(f"       {side:<16}{kind:<8}{len(samples):>6}{percentile(samples, 50):>9.0f}"
                  f"{percentile(samples, 90):>9.0f}{percentile(samples, 99):>9.0f}"
                  f"{per_call[0]:>12.2f}{per_call[1]:>11.2f}  {tokens:<30}{blocks}")  # fmt: skip


CASE_TITLES = {
    "nonstream": "case nonstream: non-streamed calls, the server reports usage (41 in / 13 out)",
    "stream": "case stream: streamed calls without usage (server omits it), alternating with non-streamed calls",
}


def prompt_counts() -> tuple[int, int, int, str]:
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.tokenizers import TokenizerRegistry

    registry = TokenizerRegistry(ModelCatalog.load(None))
    user = registry.count_text(MODEL, MESSAGES[1]["content"]).tokens
    prompt = registry.count_messages(MODEL, MESSAGES)
    reply = registry.count_text(MODEL, REPLY_TEXT).tokens
    return user, prompt.tokens, reply, prompt.tokenizer


def print_header(args: argparse.Namespace) -> None:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    user, prompt, reply, tokenizer = prompt_counts()
    print(f"python {sys.version.split()[0]}; {versions}")
    print(f"model {MODEL}; user message {user} Qwen tokens, whole prompt as ChatML {prompt} ({tokenizer}); "
          f"reply {reply} tokens")  # fmt: skip
    print(f"{args.rounds} rounds x {len(args.sides)} sides (a process each, order rotating), "
          f"{args.calls} calls per block after {WARMUP_CALLS} warm-up; servers in the driver process")  # fmt: skip
    print("added = side's percentile - plain's; ratio = added / the cheapest instrumented side's added\n")


def print_results(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    print_header(args)
    for case in args.cases:
        print(CASE_TITLES[case])
        kind = "call" if case == "nonstream" else "stream"
        print_added_table(case, results[case], kind)
        print_raw(results[case])
        print()
    print("metric instruments with data on the shared MeterProvider (tokenmeter's usage counters are on its own):")
    for side in args.sides:
        names = sorted({name for case in args.cases for name in results[case][side]["metrics"]})
        print(f"  {side:<16}{', '.join(names) or '-'}")


def json_ready(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case, sides in results.items():
        for side, r in sides.items():
            tokens = {kind: [[*usage, n] for usage, n in c.most_common()] for kind, c in r["tokens"].items()}
            out.setdefault(case, {})[side] = {**r, "tokens": tokens}
    return {"versions": {name: metadata.version(name) for name in PACKAGES}, "results": out}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per block (per side, round and case)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--json", help="also write the results and raw samples here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None:
        args.cases = [c for c in args.cases.split(",") if c]
        args.sides = [s for s in args.sides.split(",") if s]
        unknown = sorted(set(args.cases) - set(CASES)) + sorted(set(args.sides) - set(SIDES))
        if unknown:
            parser.error(f"unknown case or side: {', '.join(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    if args.child is not None:
        child_main(args)
        return
    modes = {"nonstream": "report", "stream": "omit"}
    servers = {case: OpenAICompatibleServer(usage_mode=modes[case]) for case in args.cases}  # type: ignore[arg-type]
    for server in servers.values():
        server.__enter__()
    try:
        results = run_rounds(args, servers)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    print_results(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready(results)))


if __name__ == "__main__":
    main()
