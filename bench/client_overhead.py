"""Added latency per call of every metered client, side by side in one run: instrumented vs not.

Each client (the openai SDK's chat completions as the reference, the Anthropic SDK, the Ollama client, DashScope's
SDK) calls its loopback fake from tests/support with the real SDK. Blocks of calls alternate between tokenmeter
instrumented (server usage reported, default settings: 10 % of calls also counted locally) and not, so machine noise
falls on both sides alike. Printed per client: p50 / p99 per side, the added latency, and the client's added p50 as
a ratio of the openai SDK's.

    .venv/bin/python bench/client_overhead.py [--calls 200] [--blocks 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import dashscope
import ollama
import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from anthropic_server import AnthropicServer
from dashscope_server import DashScopeServer
from ollama_server import OllamaServer
from openai_server import OpenAICompatibleServer

QUESTION = "根据以下资料回答问题：报销须在多少天内提交？" + "知识库段落。" * 50
MESSAGES = [{"role": "user", "content": QUESTION}]


def clients(stack: ExitStack) -> dict[str, Callable[[], Any]]:
    """One call of each client against its fake, started on ``stack``."""
    chat_server = stack.enter_context(OpenAICompatibleServer())
    claude_server, local_server = stack.enter_context(AnthropicServer()), stack.enter_context(OllamaServer())
    qwen_server = stack.enter_context(DashScopeServer())
    dashscope.base_http_api_url, dashscope.api_key = qwen_server.base_url, "sk-bench"
    chat = openai.OpenAI(base_url=chat_server.base_url, api_key="sk-bench", max_retries=0)
    claude = anthropic.Anthropic(base_url=claude_server.url, api_key="bench", max_retries=0)
    local = ollama.Client(host=local_server.host)
    return {
        "openai chat": lambda: chat.chat.completions.create(
            model="qwen2.5-7b-instruct", messages=MESSAGES, max_tokens=20
        ),
        "anthropic": lambda: claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=MESSAGES),
        "ollama": lambda: local.chat("qwen2.5:7b", MESSAGES, options={"num_predict": 20}),
        "dashscope": lambda: dashscope.Generation.call("qwen-plus", QUESTION, max_tokens=20),
    }


def timed(call: Callable[[], Any], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(calls: int, blocks: int) -> dict[str, dict[str, list[float]]]:
    instrumentor = TokenmeterInstrumentor()
    registry = TokenizerRegistry(ModelCatalog.load(None))
    samples: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        every = clients(stack)
        for call in every.values():  # warm: connections, tokenizers, imports
            call()
        for block in range(blocks):
            for side in ("plain", "tokenmeter") if block % 2 == 0 else ("tokenmeter", "plain"):
                if side == "tokenmeter":
                    instrumentor.instrument(tracer_provider=TracerProvider(), skip_dep_check=True, registry=registry,
                                            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                                            settings=Settings(hash_key="bench"))  # fmt: skip
                for name, call in every.items():
                    samples.setdefault(name, {}).setdefault(side, []).extend(timed(call, calls))
                if side == "tokenmeter":
                    instrumentor.flush()
                    instrumentor.uninstrument()
            print(f"block {block + 1}/{blocks} done", file=sys.stderr, flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per client per block and side")
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    samples = run(args.calls, args.blocks)
    added: dict[str, tuple[float, float]] = {}
    header = f"{'plain p50/p99 µs':>18} {'tokenmeter p50/p99 µs':>23} {'added p50/p99 µs':>18} {'x openai':>9}"
    print(f"{'client':<12} {header}")
    for name, sides in samples.items():
        plain, metered = percentiles(sides["plain"]), percentiles(sides["tokenmeter"])
        added[name] = (metered[0] - plain[0], metered[1] - plain[1])
    for name, sides in samples.items():
        plain, metered = percentiles(sides["plain"]), percentiles(sides["tokenmeter"])
        ratio = added[name][0] / added["openai chat"][0] if added["openai chat"][0] > 0 else float("nan")
        print(f"{name:<12} {plain[0]:>8.0f} / {plain[1]:>7.0f} {metered[0]:>11.0f} / {metered[1]:>9.0f}"
              f" {added[name][0]:>8.0f} / {added[name][1]:>7.0f} {ratio:>9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
