"""Added latency per OpenAI-SDK call: instrumented vs not, side by side in one run.

Both sides use the same in-process HTTP transport (no sockets), so the
difference is tokenmeter's own cost on the caller's path: span start, context,
wrappers and hand-off to the background finalizer. Blocks of calls alternate
between the two sides to spread machine noise evenly.

    .venv/bin/python bench/instrumentation_overhead.py [--calls 20000] [--blocks 40]

Cases: the server reports usage with the default drift sampling (10 % of calls also
counted locally), the same with TOKENMETER_LOCAL_COUNT=always, and a server that
reports no usage (every call counted with the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import tokenmeter
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from openai_server import REPLY_TEXT

MODEL = "qwen2.5-7b-instruct"
MESSAGES = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "根据以下资料回答问题。" + "知识库段落。" * 200},
]


def http_module() -> Any:
    """The HTTP library the installed openai SDK uses: httpx (1.x) or httpx2 (3.x)."""
    try:
        import openai._base_client as base

        return getattr(base, "httpx", None) or base.httpx2
    except AttributeError:  # pragma: no cover
        import httpx

        return httpx


def make_client(with_usage: bool) -> openai.OpenAI:
    http = http_module()
    body = {
        "id": "cmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": REPLY_TEXT}}],
    }
    if with_usage:
        body["usage"] = {"prompt_tokens": 1234, "completion_tokens": 20, "total_tokens": 1254}
    payload = json.dumps(body).encode()

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "application/json"}, content=payload)

    transport = http.MockTransport(handler)
    return openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="sk-bench",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(transport=transport),
    )


class DiscardingSpanExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def timed_calls(client: openai.OpenAI, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        samples.append((time.perf_counter_ns() - start) / 1e3)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=1000)[int(q * 1000) - 1]


def run(with_usage: bool, calls: int, blocks: int, local_count: str = "sample") -> dict[str, float]:
    client = make_client(with_usage)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DiscardingSpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrumentor = TokenmeterInstrumentor()
    settings = Settings(hash_key="bench", local_count=local_count)
    registry = TokenizerRegistry(ModelCatalog.load(None))
    registry.preload([MODEL])  # a one-off load is start-up cost, not per-call latency
    plain: list[float] = []
    metered: list[float] = []
    timed_calls(client, 200)  # warm-up: imports, connection pool, pydantic
    per_block = calls // blocks
    for _ in range(blocks):
        plain.extend(timed_calls(client, per_block))
        instrumentor.instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            settings=settings,
            registry=registry,
            skip_dep_check=True,
        )
        metered.extend(timed_calls(client, per_block))
        tokenmeter.flush(60)
        instrumentor.uninstrument()
    return {
        "plain_p50_us": percentile(plain, 0.5),
        "plain_p99_us": percentile(plain, 0.99),
        "metered_p50_us": percentile(metered, 0.5),
        "metered_p99_us": percentile(metered, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--blocks", type=int, default=40)
    args = parser.parse_args()
    print(f"openai {openai.__version__}; {args.calls} calls per side in {args.blocks} alternating blocks")
    print(
        f"{'case':<22}{'plain p50':>11}{'metered p50':>13}{'added p50':>11}"
        f"{'plain p99':>11}{'metered p99':>13}{'added p99':>11}{'p50 ratio':>11}"
    )
    cases = (
        ("server usage, default", True, "sample"),
        ("server usage, always", True, "always"),
        ("no usage (tokenizer)", False, "sample"),
    )
    for case, with_usage, local_count in cases:
        r = run(with_usage, args.calls, args.blocks, local_count)
        print(
            f"{case:<22}{r['plain_p50_us']:>9.0f}us{r['metered_p50_us']:>11.0f}us"
            f"{r['metered_p50_us'] - r['plain_p50_us']:>9.0f}us"
            f"{r['plain_p99_us']:>9.0f}us{r['metered_p99_us']:>11.0f}us"
            f"{r['metered_p99_us'] - r['plain_p99_us']:>9.0f}us"
            f"{r['metered_p50_us'] / r['plain_p50_us']:>10.2f}x"
        )


if __name__ == "__main__":
    main()
