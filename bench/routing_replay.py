"""The demo's day of questions replayed with routing and the repeat-answer cache off and on, side by side.

Each side is the whole pipeline: the demo's users (tokenmeter/demo/workload.py: 9 users in 3 departments,
RAG prompts, some streamed, retrieval reported with ``tokenmeter.retrieval``) through the instrumented
openai SDK, against the demo's local LLM server, asking a real ``tokenmeter serve`` (its own chDB store)
before each call:

- ``off``: the demo policy's routing section removed, the cache off;
- ``on``: the demo policy's routing (docs/routing.md) and the in-memory answer cache.

Budgets are set far out of reach on both sides, so no quota changes a model: the difference is routing's
and the cache's. It prints, per side, the chat calls, what they cost (from the spans: real and virtual
prices apart), the calls each rule moved, the cache's hit rate and what it saved; and how much the check
takes per call (bench/routing_decision.py has the enforcer's own figures).

    .venv/bin/python bench/routing_replay.py [--scale 1.0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo import savings
from tokenmeter.demo.llm_server import DemoLLMServer
from tokenmeter.demo.run import SILENT_MODELS, Endpoints, instrumented, run_workload
from tokenmeter.demo.workload import plan
from tokenmeter.tokenizers import TokenizerRegistry

DEMO_POLICY = Path(__file__).resolve().parents[1] / "tokenmeter" / "demo" / "policy.yaml"
ROOMY_BUDGETS = [{"name": "org", "scope": "organisation", "period": "day", "limit": {"tokens": 10**12}}]


def policy_text(routing: bool) -> str:
    policy = yaml.safe_load(DEMO_POLICY.read_text(encoding="utf-8"))
    policy["budgets"] = ROOMY_BUDGETS
    if not routing:
        policy.pop("routing")
    return yaml.safe_dump(policy, allow_unicode=True)


def start_serve(work: Path, routing: bool) -> tuple[subprocess.Popen[str], dict[str, Any], str]:
    work.mkdir()
    policy = work / "policy.yaml"
    policy.write_text(policy_text(routing), encoding="utf-8")
    os.utime(policy, (time.time() - 10, time.time() - 10))  # settled: serve need not wait for it
    env = {**os.environ, "XDG_DATA_HOME": str(work / "xdg")}
    args = [sys.executable, "-m", "tokenmeter.cli", "serve", "--clickhouse-url", f"chdb://{work / 'chdb'}",
            "--policy", str(policy), "--otlp-grpc-port", "0", "--otlp-http-port", "0", "--api-port", "0"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    token = (work / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()
    return process, info, token


def side(info: dict[str, Any], token: str, llm: DemoLLMServer, routing: bool, scale: float, seed: int
         ) -> dict[str, Any]:  # fmt: skip
    """One side's run: what its chat calls cost, and what routing and the cache did."""
    endpoints = Endpoints(info["otlp_http"], info["api"], token)
    started = time.perf_counter()
    with instrumented(endpoints, hash_key="bench-routing", answer_cache="memory" if routing else None) as spans:
        run_workload(llm.base_url, plan(seed=seed, scale=scale), None)
    elapsed = time.perf_counter() - started
    cost: defaultdict[str, Decimal] = defaultdict(Decimal)
    for span in spans.get_finished_spans():
        attributes = span.attributes or {}
        if attributes.get(semconv.GEN_AI_OPERATION_NAME) == semconv.OPERATION_CHAT and semconv.TM_COST in attributes:
            cost[savings.currency_label(attributes)] += Decimal(str(attributes[semconv.TM_COST]))
    found = savings.savings(spans, ModelCatalog.load(None))
    return {"cost": dict(cost), "found": found, "seconds": elapsed}


def show(results: dict[str, list[dict[str, Any]]]) -> None:
    off, on = results["off"], results["on"]
    currencies = sorted({currency for run in off + on for currency in run["cost"]})
    print(f"{'':28} {'off':>16} {'on':>16} {'on / off':>9}")
    calls = [sum(r["found"].chat_calls for r in runs) / len(runs) for runs in (off, on)]
    print(f"{'chat calls (mean per round)':28} {calls[0]:16.1f} {calls[1]:16.1f}")
    for currency in currencies:
        spent = [sum((r["cost"].get(currency, Decimal(0)) for r in runs), Decimal(0)) / len(runs) for runs in (off, on)]
        ratio = f"{spent[1] / spent[0]:.3f}x" if spent[0] else "–"
        print(f"{'cost ' + currency:28} {spent[0]:16.6f} {spent[1]:16.6f} {ratio:>9}")
    found = [r["found"] for r in on]
    moved: defaultdict[str, int] = defaultdict(int)
    for one in found:
        for (rule, requested, ran_on), count in one.moved.items():
            moved[f"{rule}: {requested} -> {ran_on}"] += count
    total = sum(one.chat_calls for one in found)
    for what, count in sorted(moved.items()):
        print(f"moved by {what}: {count / len(found):.1f} calls per round ({count / total:.1%} of chat calls)")
    hits = sum(sum(one.cache_hits.values()) for one in found)
    print(
        f"cache: {hits / len(found):.1f} hits per round, hit rate {hits / total:.1%}, "
        f"{sum(one.cache_saved_tokens for one in found) / len(found):,.0f} tokens saved per round"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    llm = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(None)), SILENT_MODELS).start()
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as directory:
        serves = {name: start_serve(Path(directory) / name, name == "on") for name in results}
        try:
            for number in range(args.rounds):  # alternating sides, the same day of questions on both
                for name, (_process, info, token) in serves.items():
                    results[name].append(side(info, token, llm, name == "on", args.scale, seed=20261128 + number))
                    print(f"round {number + 1} {name}: {results[name][-1]['seconds']:.1f} s", file=sys.stderr)
        finally:
            for process, _info, _token in serves.values():
                process.terminate()
                process.wait(30)
            llm.stop()
    show(results)


if __name__ == "__main__":
    main()
