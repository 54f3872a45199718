"""What routing adds to a check: the enforcer's whole check (``EnforcerService.check``: estimates, routing,
budgets, reservation) with and without a routing section, and the app's side (the question's features
and its intent), side by side in one run.

Cases, each over the same checks (the demo's questions, 1,000 users, kb-assistant asking for deepseek-chat):
- ``no routing``: the policy has no routing section (the baseline);
- ``routing, no features``: routing rules, but the checks carry no question features (embeddings, old clients);
- ``routing, features, first rule``: a lookup question routed by the first rule;
- ``routing, features, budget rule``: no intent rule holds, so the rules run down to ``budget_left``, which
  reads the budgets' state under the check lock;
- app side: ``IntentClassifier.classify`` on the demo's questions (intent rules; the trained classifier's
  own figures are in bench/intent_classification.py).

    .venv/bin/python bench/routing_decision.py [--checks 20000]   # 3 interleaved rounds; medians of p50/p99
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo.workload import QUESTIONS
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.quota_wire import CheckBody, RouteFeatures
from tokenmeter.routing.intents import IntentClassifier

BUDGETS = """
timezone: Asia/Shanghai
budgets:
  - {name: per-user-daily, scope: user, period: day, limit: {tokens: 100000000000}, action: deny}
  - {name: dept-month, scope: department, period: month, limit: {tokens: 100000000000}, action: downgrade}
"""
ROUTING = """
routing:
  tiers:
    - {name: small, model: qwen2.5-7b-instruct}
    - {name: medium, model: qwen2.5-14b-instruct}
    - {name: remote, model: deepseek-chat}
  critical_apps: [code-review]
  intents:
    - {name: reasoning, patterns: ["(?i)summari[sz]e|为什么|如何|怎么办|比较|分析"]}
    - {name: lookup, patterns: ["(?i)^(when|which|how long|where)\\\\b|多久|几天|哪些"]}
  rules:
    - name: short-lookup
      when: {intent: [lookup], question_chars: {max: 80}, passages: {min: 1}, top_score: {min: 0.5}}
      tier: small
    - name: long-reasoning
      when: {intent: [reasoning], input_tokens: {min: 2000}}
      tier: remote
    - name: brownout
      when: {budget_left: {max: 0.2}}
      down: 1
"""
LOOKUP = RouteFeatures(intent="lookup", question_chars=20, depth=1, passages=3, top_score=0.8)
UNNAMED = RouteFeatures(question_chars=200, depth=2, passages=3, top_score=0.8)


def service(text: str, directory: Path) -> EnforcerService:
    path = directory / f"policy-{abs(hash(text))}.yaml"
    path.write_text(text, encoding="utf-8")
    options = EnforcerOptions(policy_path=path, policy_settle_seconds=0.0, lease_max_calls=1)
    return EnforcerService(lambda: None, options, ModelCatalog.load(None))  # type: ignore[arg-type,return-value]


def bodies(count: int, route: RouteFeatures | None) -> list[CheckBody]:
    return [CheckBody(user=f"user-{n % 1000}", department="销售部", app="kb-assistant", model="deepseek-chat",
                      input_tokens=900, max_output_tokens=300, route=route) for n in range(count)]  # fmt: skip


def timed(run: Callable[[object], object], items: list) -> list[float]:  # type: ignore[type-arg]
    clock = time.perf_counter_ns
    samples = []
    for item in items:
        start = clock()
        run(item)
        samples.append((clock() - start) / 1000)
    return samples


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        plain, routed = service(BUDGETS, Path(directory)), service(BUDGETS + ROUTING, Path(directory))
        classifier = IntentClassifier.from_routing_document(routed.enforcer.policy.routing_document)
        questions = list(QUESTIONS) * max(1, args.checks // len(QUESTIONS))

        def check(svc: EnforcerService) -> Callable[[object], object]:
            def run(body: object) -> object:
                answer = svc.check(body)  # type: ignore[arg-type]
                if answer.reservation_id is not None:
                    svc.release(answer.reservation_id)
                return answer

            return run

        cases: dict[str, tuple[Callable[[object], object], list]] = {  # type: ignore[type-arg]
            "no routing": (check(plain), bodies(args.checks, LOOKUP)),
            "routing, no features": (check(routed), bodies(args.checks, None)),
            "routing, features, first rule": (check(routed), bodies(args.checks, LOOKUP)),
            "routing, features, budget rule": (check(routed), bodies(args.checks, UNNAMED)),
            "app: classify the question": (classifier.classify, questions),  # type: ignore[dict-item]
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _round in range(3):
            for name, (run, items) in cases.items():
                gc.collect()
                samples = timed(run, items)
                results[name].append((percentile(samples, 0.5), percentile(samples, 0.99)))
        plain.close()
        routed.close()
    base50 = statistics.median(p50 for p50, _ in results["no routing"])
    print(f"{'case':34} {'p50 µs':>8} {'p99 µs':>8} {'p50 vs no routing':>18}")
    for name, rounds in results.items():
        p50, p99 = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        print(f"{name:34} {p50:8.1f} {p99:8.1f} {p50 / base50:17.2f}x")
    added = [statistics.median(r[1] for r in results[name]) for name in cases if name.startswith("routing, features")]
    classify99 = statistics.median(r[1] for r in results["app: classify the question"])
    print(
        f"target: the decision's added latency p99 < 1 ms: the whole routed check p99 {max(added):.1f} µs"
        f" + classify p99 {classify99:.1f} µs -> {'met' if max(added) + classify99 < 1000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
