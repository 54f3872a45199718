"""The app's quota check (``QuotaClient.check``, what runs before each LLM call) against a real serve.

Side by side in one run, at concurrency 1, 10 and 100 (threads of this process, each its own
user, so each has its own leases): checks/s and the latency each caller saw, p50 / p99,

- with leases: a serve whose budgets are far from every threshold, so checks come back with
  leases of up to 8 calls and most checks are decided in the app;
- without: the same serve started with ``--lease-calls 1``, so every check is an HTTP round
  trip to ``/v1/check``;
- Keeper: as "without", with ``TOKENMETER_COORDINATION_URL`` pointing at a real ZooKeeper
  server (Debian's ``zookeeper``, started here; skipped when it is not installed): the
  enforcer leases budget headroom from it as one of several replicas would.

Every call's reservation (or lease share) is released as the instrumentation does after a
call. The server and this process share the machine's 2 cores.

    .venv/bin/python bench/quota_check_inapp.py [--checks 4000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from zookeeper_server import ZooKeeperServer, ZooKeeperUnavailableError

from tokenmeter.instrumentation.quota.client import QuotaClient

POLICY = """
timezone: UTC
budgets:
  - {name: per-user, scope: user, period: day, limit: {tokens: 100000000000}}
  - {name: per-department, scope: department, period: month, limit: {tokens: 100000000000}}
"""
CONCURRENCY = (1, 10, 100)


def start_serve(work: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    policy = work / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    os.utime(policy, (time.time() - 10, time.time() - 10))  # settled: serve need not wait for it
    env = {**os.environ, "XDG_DATA_HOME": str(work / "xdg"), **(env or {})}
    args = [sys.executable, "-m", "tokenmeter.cli", "serve", "--clickhouse-url", f"chdb://{work / 'chdb'}",
            "--policy", str(policy), "--otlp-grpc-port", "0", "--otlp-http-port", "0", "--api-port", "0",
            *extra]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    token = (work / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()
    return process, info["api"], token


def run(api: str, token: str, concurrency: int, checks: int) -> tuple[float, list[float], list[float]]:
    """(checks/s, latencies of checks that asked the enforcer, latencies of checks decided from a lease)."""
    client = QuotaClient(api, token, timeout=10)
    per_thread = max(1, checks // concurrency)
    asked: list[list[float]] = [[] for _ in range(concurrency)]
    leased: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def work(index: int) -> None:
        key = (f"user-{index}", f"dept-{index % 3}", "bench", "qwen2.5-7b-instruct")
        client.check(key, 500, 200)  # warm: connection made
        barrier.wait()
        for _ in range(per_thread):
            # this thread alone uses its key: whether its lease has room now says how the check is decided
            from_lease = client.leases.take(key, 500, 200, spend=False) is not None
            started = time.perf_counter()
            verdict = client.check(key, 500, 200)
            (leased if from_lease else asked)[index].append(time.perf_counter() - started)
            assert verdict.action == "allow", verdict.reason
            client.finished(verdict)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client.close()
    asked_flat = [value for own in asked for value in own]
    leased_flat = [value for own in leased for value in own]
    return (len(asked_flat) + len(leased_flat)) / elapsed, asked_flat, leased_flat


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=1000)[int(share * 1000) - 1] if len(values) > 1 else values[0]


def micros(value: float | None) -> str:
    return "–" if value is None else f"{value * 1e6:,.0f} µs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=4000, help="checks per run (split over the threads)")
    args = parser.parse_args()
    rows = []
    with contextlib.ExitStack() as stack:
        directories = [Path(stack.enter_context(tempfile.TemporaryDirectory())) for _ in range(4)]
        serves = {"leases": start_serve(directories[0]), "no leases": start_serve(directories[1], "--lease-calls", "1")}
        zookeeper = ZooKeeperServer(directories[2])
        try:
            zookeeper.start()
            stack.callback(zookeeper.stop)
            serves["no leases, Keeper"] = start_serve(
                directories[3], "--lease-calls", "1", env={"TOKENMETER_COORDINATION_URL": zookeeper.url("bench")}
            )
        except ZooKeeperUnavailableError as exc:
            print(f"without the Keeper runs: {exc}", file=sys.stderr)
        try:
            for concurrency in CONCURRENCY:
                for name, (_process, api, token) in serves.items():
                    rate, asked, leased = run(api, token, concurrency, args.checks)
                    everything = asked + leased
                    rows.append((concurrency, name, rate, percentile(everything, 0.5), percentile(everything, 0.99),
                                 len(leased) / len(everything), percentile(leased, 0.99),
                                 percentile(asked, 0.5), percentile(asked, 0.99)))  # fmt: skip
                    print(f"concurrency {concurrency}, {name}: {rate:,.0f} checks/s", file=sys.stderr, flush=True)
        finally:
            for process, _api, _token in serves.values():
                process.terminate()
                process.wait(60)
    print("| concurrency | | checks/s | all p50 | all p99 | decided from a lease | lease p99 | asked p50 | asked p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency, name, rate, p50, p99, share, lease_p99, asked_p50, asked_p99 in rows:
        print(f"| {concurrency} | {name} | {rate:,.0f} | {micros(p50)} | {micros(p99)} | {share:.0%} "
              f"| {micros(lease_p99)} | {micros(asked_p50)} | {micros(asked_p99)} |")  # fmt: skip
    by = {(c, n): r for c, n, r, *_ in rows}
    for concurrency in CONCURRENCY:
        ratio = by[(concurrency, "leases")] / by[(concurrency, "no leases")]
        line = f"concurrency {concurrency}: leases give {ratio:.1f}x the checks/s"
        if (concurrency, "no leases, Keeper") in by:
            line += f"; Keeper {by[(concurrency, 'no leases, Keeper')] / by[(concurrency, 'no leases')]:.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
