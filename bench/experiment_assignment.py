"""What an experiment adds to a check: the enforcer's first step (``CallEstimates.request``: the arm, then the
estimates) with and without experiments in the policy, side by side in one run.

Cases, each over the same check bodies (5,000 users, a kb-assistant asking for qwen2.5-7b-instruct):
- ``no experiments``: the policy has none (the baseline);
- ``another app's experiment``: the policy has one, for an app these calls are not from;
- ``in the experiment, users seen before``: the arm is remembered per user;
- ``in the experiment, a new user each check``: the arm is hashed (sha256 of name and user);
- ``in a dated experiment``: starts/ends, so the enforcer's clock is read and turned into a local day.

    .venv/bin/python bench/experiment_assignment.py [--checks 200000]   # 3 interleaved rounds; medians
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from tokenmeter.catalog import ModelCatalog
from tokenmeter.enforcer.call_estimates import CallEstimates
from tokenmeter.enforcer.policy import Policy, parse_policy
from tokenmeter.quota_wire import CheckBody

BUDGETS = """
timezone: Asia/Shanghai
budgets:
  - {name: per-user-daily, scope: user, period: day, limit: {tokens: 200000}, action: deny}
"""
EXPERIMENT = """
experiments:
  - {name: kb-ab, app: %(app)s, model: qwen2.5-7b-instruct, candidate: baichuan2-7b-chat, share: 0.5%(days)s}
"""


def policy(app: str | None, dated: bool = False) -> Policy:
    text = BUDGETS
    if app is not None:
        text += EXPERIMENT % {"app": app, "days": ", starts: 2026-01-01, ends: 2099-01-01" if dated else ""}
    return parse_policy(text, "<bench>")


def bodies(count: int, users: int) -> list[CheckBody]:
    return [CheckBody(user=f"user-{n % users}", department="法务部", app="kb-assistant", model="qwen2.5-7b-instruct",
                      input_tokens=900, max_output_tokens=300) for n in range(count)]  # fmt: skip


def timed(run: Callable[[CheckBody], object], checks: list[CheckBody]) -> list[float]:
    clock = time.perf_counter_ns
    samples = []
    for body in checks:
        start = clock()
        run(body)
        samples.append((clock() - start) / 1000)
    return samples


def _round_of(checks: list[CheckBody] | list[list[CheckBody]], number: int) -> list[CheckBody]:
    """The checks of one round: the same every round, or (a list per round) new ones."""
    return checks[number] if isinstance(checks[0], list) else checks  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200_000)
    args = parser.parse_args()
    estimates = CallEstimates(ModelCatalog.load(None))
    returning = bodies(args.checks, 5_000)
    fresh = [[CheckBody(**{**body.model_dump(), "user": f"new-{r}-{n}"}) for n, body in enumerate(returning)]
             for r in range(4)]  # one list per round (and the warm-up): each user's first check  # fmt: skip
    cases = [
        ("no experiments", policy(None), returning),
        ("another app's experiment", policy("hr-bot"), returning),
        ("in the experiment, users seen before", policy("kb-assistant"), returning),
        ("in the experiment, a new user each check", policy("kb-assistant"), fresh),
        ("in a dated experiment", policy("kb-assistant", dated=True), returning),
    ]
    gc.freeze()
    for _label, chosen, checks in cases:  # warm: prices looked up once, as in a running enforcer
        timed(lambda body, chosen=chosen: estimates.request(chosen, body), _round_of(checks, 3)[:5_000])
    rounds: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in cases}
    for number in range(3):  # the cases interleaved, so a slower stretch of the machine hits them all
        for label, chosen, checks in cases:
            samples = timed(lambda body, chosen=chosen: estimates.request(chosen, body), _round_of(checks, number))
            rounds[label].append((statistics.median(samples), statistics.quantiles(samples, n=100)[98]))
    results = {label: (statistics.median(p50 for p50, _ in runs), statistics.median(p99 for _, p99 in runs))
               for label, runs in rounds.items()}  # fmt: skip
    base_p50 = results["no experiments"][0]
    print(f"{'':44} {'p50 µs':>8} {'p99 µs':>8} {'p50 / none':>11}")
    for label, (p50, p99) in results.items():
        print(f"{label:44} {p50:8.2f} {p99:8.2f} {p50 / base_p50:10.2f}x")


if __name__ == "__main__":
    main()
