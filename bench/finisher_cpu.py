"""CPU the background finisher spends per metered call, beside the tokenizer's own time for the same counts.

The caller never waits for the finisher (counting, pricing, span attributes, metrics), but on a
busy async server it competes for the GIL and the core, so its CPU per call is what metering
costs. This script makes calls through the real openai SDK to a model server in another process
on 127.0.0.1 (a RAG-sized Qwen prompt; a ~300-token answer, streamed in small chunks or returned
whole), reads the finisher thread's own CPU clock before and after (after a flush), and divides
by the calls. The tokenizer's own time is measured where it runs, inside the finisher (its
encode calls are timed on that thread), and "beyond" is the rest. For reference, the raw
tokenizer's time for the same counts in a hot loop on the main thread is printed too.

    .venv/bin/python bench/finisher_cpu.py [--calls 2000] [--rounds 3] [--held] [--in-process]

``--held`` holds each call's finishing work back and runs it all afterwards, back to back, on a
thread that shares the GIL with no one: the work's own cost, without what a busy caller adds.
``--in-process`` serves the answers from an in-process transport instead: the caller then
never waits for I/O, so it holds the GIL all the time and the finisher pays for a contended
GIL at every hand-over (on this project's VMs ~100 µs of CPU each); the worst case, not a
model server's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import tokenmeter
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.finalizer import BackgroundFinalizer
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry
from tokenmeter.tokenizers.chatml import render_chatml
from tokenmeter.tokenizers.messages import read_messages
from tokenmeter.tokenizers.tokenizer_loading import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instrumentation_overhead import MESSAGES, MODEL, DiscardingSpanExporter, http_module

ANSWER = "根据知识库，答案如下：" + "这是一个关于产品配置的详细说明。" * 25  # ~300 Qwen tokens
CHUNK_CHARACTERS = 4  # a token or two per chunk, as model servers stream


def _completion(with_usage: bool) -> bytes:
    body: dict[str, Any] = {
        "id": "cmpl-bench", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ANSWER}}],
    }  # fmt: skip
    if with_usage:
        body["usage"] = {"prompt_tokens": 1234, "completion_tokens": 300, "total_tokens": 1534}
    return json.dumps(body).encode()


def _stream() -> bytes:
    """SSE chunks of the answer, without usage (what Chatchat's kb_chat and file_chat get)."""
    events = []
    for start in range(0, len(ANSWER), CHUNK_CHARACTERS):
        delta = {"content": ANSWER[start : start + CHUNK_CHARACTERS]}
        chunk = {"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
        events.append(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n")
    last = {"id": "cmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
    events += [f"data: {json.dumps(last)}\n\n", "data: [DONE]\n\n"]
    return "".join(events).encode()


PAYLOADS = {"usage": ("application/json", lambda: _completion(True)),
            "no usage": ("application/json", lambda: _completion(False)),
            "stream": ("text/event-stream", _stream)}  # fmt: skip


def serve_payloads(port_pipe: Any) -> None:
    """The model server, in its own process: POST /<case>/v1/chat/completions answers that case's payload."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = {kind.replace(" ", "-"): (ctype, make()) for kind, (ctype, make) in PAYLOADS.items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            content_type, body = bodies[self.path.split("/")[1]]
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_pipe.send(server.server_address[1])
    server.serve_forever()


def make_client(kind: str, port: int | None) -> openai.OpenAI:
    """A client of the server process, or (port None) of an in-process transport with the same answers."""
    if port is not None:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/{kind.replace(' ', '-')}/v1", api_key="sk-bench",
                             max_retries=0)  # fmt: skip
    http = http_module()
    content_type, make = PAYLOADS[kind]
    payload = make()

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": content_type}, content=payload)

    return openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-bench", max_retries=0,
                         http_client=openai.DefaultHttpxClient(transport=http.MockTransport(handler)))  # fmt: skip


def call(client: openai.OpenAI, kind: str) -> None:
    if kind == "stream":
        for _chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass
    else:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


class FinisherClocks:
    """The finisher thread's CPU clock, and the CPU its tokenizer calls take on it (their encode calls timed).

    Make one per registry: each instance wraps the encoder once more.
    """

    def __init__(self, registry: TokenizerRegistry) -> None:
        self.tokenizer_ns = 0
        encoding = registry._models.tokenizer_for(MODEL).encoding  # the instance the finisher counts with
        for name in ("encode", "encode_ordinary"):
            setattr(encoding, name, self._timed(getattr(encoding, name)))

    def _timed(self, encode: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not threading.current_thread().name.startswith("tokenmeter-finalizer"):
                return encode(*args, **kwargs)
            started = time.thread_time_ns()
            try:
                return encode(*args, **kwargs)
            finally:
                self.tokenizer_ns += time.thread_time_ns() - started

        return timed

    @staticmethod
    def finisher_ns() -> int:
        for thread in threading.enumerate():
            if thread.name == "tokenmeter-finalizer" and thread.is_alive() and thread.ident is not None:
                return time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
        return 0  # not started yet


def finisher_us_per_call(
    kind: str, calls: int, registry: TokenizerRegistry, clocks: FinisherClocks, port: int | None, held: bool
) -> tuple[float, float]:
    """The finisher's CPU per call, and the part of it its tokenizer took.

    ``held``: the calls' finishing work is held back and then run back to back on a thread of its
    own once the calls are done, so it shares the GIL with no one: the work's own cost.
    """
    client = make_client(kind, port)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingSpanExporter()))
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider(
        metric_readers=[InMemoryMetricReader()]), settings=Settings(hash_key="bench"), registry=registry,
        skip_dep_check=True)  # fmt: skip
    try:
        for _ in range(50):  # warm-up: the finisher thread, caches, pydantic
            call(client, kind)
        tokenmeter.flush(60)
        if held:
            return held_work_us(client, kind, calls, clocks)
        before, clocks.tokenizer_ns = clocks.finisher_ns(), 0
        for _ in range(calls):
            call(client, kind)
        tokenmeter.flush(60)
        return (clocks.finisher_ns() - before) / calls / 1e3, clocks.tokenizer_ns / calls / 1e3
    finally:
        instrumentor.uninstrument()


def held_work_us(client: openai.OpenAI, kind: str, calls: int, clocks: FinisherClocks) -> tuple[float, float]:
    jobs: list[Any] = []
    submit = BackgroundFinalizer.submit
    BackgroundFinalizer.submit = lambda self, job: jobs.append(job)  # type: ignore[method-assign]
    try:
        for _ in range(calls):
            call(client, kind)
    finally:
        BackgroundFinalizer.submit = submit  # type: ignore[method-assign]
    spent: list[int] = []

    def run_all() -> None:
        started = time.thread_time_ns()
        for job in jobs:
            job()
        spent.append(time.thread_time_ns() - started)

    clocks.tokenizer_ns = 0
    worker = threading.Thread(target=run_all, name="tokenmeter-finalizer-held")
    worker.start()
    worker.join()
    return spent[0] / calls / 1e3, clocks.tokenizer_ns / calls / 1e3


def raw_tokenizer() -> tuple[Any, str]:
    """The model's tokenizer loaded on its own (not the registry's timed one), and the prompt as it renders."""
    entry = ModelCatalog.load(None).lookup(MODEL)
    assert entry is not None and entry.tokenizer is not None
    tokenizer = load_tokenizer(entry.tokenizer, allow_download=False)
    return tokenizer, render_chatml(read_messages(MESSAGES), entry.chat_format or "chatml")


def tokenizer_hot_loop_us(kind: str, calls: int, tokenizer: Any, prompt: str) -> float:
    """The raw tokenizer's CPU for what the finisher counts in this case, per call, in a hot loop."""
    started = time.thread_time()
    for _ in range(calls):
        tokenizer.count_text(prompt)
        tokenizer.count_text(ANSWER)
    per_call = (time.thread_time() - started) / calls * 1e6
    # With server usage only the drift sample is counted locally (the default: 10 % of calls).
    return per_call * Settings().drift_sample_rate if kind == "usage" else per_call


def start_server() -> tuple[Any, int]:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=serve_payloads, args=(sending,), daemon=True)
    process.start()
    return process, receiving.recv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; cases alternate within each")
    parser.add_argument("--in-process", action="store_true", help="no server process: the caller never waits")
    parser.add_argument("--held", action="store_true", help="finish the calls afterwards, back to back, alone")
    args = parser.parse_args()
    registry = TokenizerRegistry(ModelCatalog.load(None))
    registry.preload([MODEL])
    clocks, (tokenizer, prompt) = FinisherClocks(registry), raw_tokenizer()
    server, port = (None, None) if args.in_process else start_server()
    kinds = ("usage", "no usage", "stream")
    runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    hot: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_number in range(args.rounds):
        for kind in kinds:
            print(f"round {round_number + 1}/{args.rounds}: {kind}", file=sys.stderr, flush=True)
            runs[kind].append(finisher_us_per_call(kind, args.calls, registry, clocks, port, args.held))
            hot[kind].append(tokenizer_hot_loop_us(kind, args.calls, tokenizer, prompt))
    if server is not None:
        server.terminate()
    report(args, runs, hot)
    return 0


def report(args: argparse.Namespace, runs: dict[str, list[tuple[float, float]]], hot: dict[str, list[float]]) -> None:
    where = "an in-process transport" if args.in_process else "a server process on 127.0.0.1"
    where += "; finishing work held and run afterwards, alone" if args.held else ""
    print(f"openai {openai.__version__}; answers from {where}; {args.calls} calls per case, {args.rounds} rounds; "
          f"answer {len(ANSWER)} characters, streamed in {CHUNK_CHARACTERS}-character chunks; medians")  # fmt: skip
    print(f"{'case':<34}{'finisher CPU/call':>19}{'its tokenizer':>15}{'beyond':>10}{'raw tokenizer, hot':>21}")
    labels = {"usage": "server reports usage (non-stream)", "no usage": "no usage (non-stream)",
              "stream": "stream without usage"}  # fmt: skip
    for kind, measured in runs.items():
        spent = statistics.median(total for total, _ in measured)
        tokenizer = statistics.median(part for _, part in measured)
        beyond = statistics.median(total - part for total, part in measured)
        print(f"{labels[kind]:<34}{spent:>16.0f} µs{tokenizer:>12.0f} µs{beyond:>7.0f} µs"
              f"{statistics.median(hot[kind]):>18.0f} µs")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
