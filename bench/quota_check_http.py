"""`POST /v1/check` over loopback: latency at a steady 1,000 checks/s, and peak checks/s.

A real `tokenmeter serve --policy` (the three-department policy of docs/quotas.md, embedded
chDB) answers checks for 5,000 users across the three departments and four models; every
check reserves, as an app's would. The load generator is this process: keep-alive
connections, prebuilt requests, asyncio streams (httpx per request would cost more CPU
than the server on these 2 cores).

Side by side in one run:
- paced: 1,000 checks/s for ``--seconds`` on 16 connections; latency from the moment each
  request was written, and from its scheduled time (a stalled server cannot hide its
  queue; this one also includes the generator's own timer slack of up to 1 ms);
- back-to-back on 1, 10 and 100 connections: requests/s and each check's latency, for
  ``GET /healthz`` (uvicorn + Starlette with no work), a bare POST endpoint on serve's stack
  (``bench/bare_endpoint.py``: the check path's shell without the enforcer's work, the floor
  the check is held to: >= 0.8x) and ``POST /v1/check``,
  with serve's CPU time per check (from /proc: what the load generator cannot flatter; one
  core's worth of checks per second is 1 / that).

Before measuring, every one of the users asks once (with Keeper leases, a user's first check
grows a lease on the server: a network round trip; later checks are decided from it).

Then the same against a serve that leases budget headroom from a real ZooKeeper server
(``TOKENMETER_COORDINATION_URL``, as each of several replicas would; Debian's ``zookeeper``,
started here; skipped when it is not installed).

    .venv/bin/python bench/quota_check_http.py [--seconds 10] [--limit-scale 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from zookeeper_server import ZooKeeperServer, ZooKeeperUnavailableError

DOCS_POLICY = Path(__file__).resolve().parents[1] / "docs" / "quotas.md"
DEPARTMENTS = ("研发部", "销售部", "客服部")
MODELS = ("gpt-4o", "gpt-4o-mini", "deepseek-chat", "qwen2.5-7b-instruct")
CONCURRENCY = (1, 10, 100)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def scaled_limits(policy: str, scale: int) -> str:
    """The policy with every ``tokens:`` and ``cost:`` limit multiplied by ``scale``."""
    return re.sub(r"\b(tokens|cost): (\d+)", lambda m: f"{m.group(1)}: {int(m.group(2)) * scale}", policy)


def start_serve(
    work: Path, coordination: str | None = None, limit_scale: int = 1
) -> tuple[subprocess.Popen[str], str, str]:
    work.mkdir(parents=True, exist_ok=True)
    block = re.search(r"```yaml\n(.*?)```", DOCS_POLICY.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    policy = work / "policy.yaml"
    policy.write_text(scaled_limits(block.group(1), limit_scale), encoding="utf-8")
    os.utime(policy, (time.time() - 10, time.time() - 10))  # settled: serve need not wait for it
    env = {**os.environ, "XDG_DATA_HOME": str(work / "xdg")}
    if coordination is not None:
        env["TOKENMETER_COORDINATION_URL"] = coordination
    args = [sys.executable, "-m", "tokenmeter.cli", "serve", "--clickhouse-url", f"chdb://{work / 'chdb'}",
            "--policy", str(policy), "--otlp-grpc-port", "0", "--otlp-http-port", "0", "--api-port", "0"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    info = json.loads(process.stdout.readline())
    token = (work / "xdg" / "tokenmeter" / "api-token").read_text(encoding="utf-8").strip()
    host, port = info["api"].removeprefix("http://").rsplit(":", 1)
    return process, f"{host}:{port}", token


def start_bare(token: str) -> tuple[subprocess.Popen[str], str]:
    """bench/bare_endpoint.py: serve's HTTP stack and the check path's shell, without the enforcer's work."""
    args = [sys.executable, str(Path(__file__).resolve().parent / "bare_endpoint.py"), token]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    return process, json.loads(process.stdout.readline())["api"].removeprefix("http://")


def check_requests(token: str, count: int) -> list[bytes]:
    rng = random.Random(11)
    requests = []
    for _ in range(count):
        body = json.dumps({
            "user": f"user-{rng.randrange(5000)}", "department": rng.choice(DEPARTMENTS), "app": "chatchat",
            "model": rng.choice(MODELS), "input_tokens": rng.randrange(50, 4000), "max_output_tokens": 512,
        }, ensure_ascii=False).encode()  # fmt: skip
        requests.append(
            b"POST /v1/check HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return requests


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return status


async def paced(address: str, requests: list[bytes], rate: float, seconds: float) -> tuple[list[float], list[float]]:
    """(latency from each request's due time, latency from when it was written), sorted."""
    host, port = address.rsplit(":", 1)
    total = int(rate * seconds)
    schedule: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    from_due: list[float] = []
    from_send: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while (item := await schedule.get()) is not None:
            due, request = item
            sent = time.perf_counter()
            if await exchange(reader, writer, request) != 200:
                errors += 1
            done = time.perf_counter()
            from_due.append(done - due)
            from_send.append(done - sent)
        writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(16)]
    await asyncio.sleep(0.2)
    start = time.perf_counter()
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        schedule.put_nowait((due, requests[index % len(requests)]))
    for _ in workers:
        schedule.put_nowait(None)
    await asyncio.gather(*workers)
    assert errors == 0, f"{errors} checks failed"
    return sorted(from_due), sorted(from_send)


async def peak(address: str, requests: list[bytes], connections: int, seconds: float) -> tuple[float, list[float]]:
    """Requests per second over ``connections`` connections sending back-to-back, and each
    request's latency (sorted)."""
    host, port = address.rsplit(":", 1)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        index = offset
        while (sent := time.perf_counter()) < stop_at:
            assert await exchange(reader, writer, requests[index % len(requests)]) == 200
            latencies.append(time.perf_counter() - sent)
            index += connections
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(offset) for offset in range(connections)))
    return len(latencies) / (time.perf_counter() - started), sorted(latencies)


async def each_once(address: str, requests: list[bytes], connections: int) -> None:
    """Send each request once over ``connections`` connections (a warm-up: every user has asked)."""
    host, port = address.rsplit(":", 1)

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for request in requests[offset::connections]:
            assert await exchange(reader, writer, request) == 200
        writer.close()

    await asyncio.gather(*(worker(offset) for offset in range(connections)))


def percentile(samples: list[float], share: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * share))] * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(label: str, process: subprocess.Popen[str], address: str, token: str, args: argparse.Namespace) -> None:
    requests = check_requests(token, 50_000)
    scale = f", its limits x{args.limit_scale:,}" if args.limit_scale != 1 else ""
    _log(f"{label}, serve {address}: policy from docs/quotas.md{scale}; warming up (every user asks once)")
    asyncio.run(peak(address, requests, 8, 2.0))  # warm-up
    asyncio.run(each_once(address, requests[:20_000], 16))
    from_due, from_send = asyncio.run(paced(address, requests, 1000.0, args.seconds))
    for name, latencies in (("sent -> answered", from_send), ("due -> answered", from_due)):
        _log(f"{label}: paced 1,000 checks/s for {args.seconds:.0f} s ({len(latencies):,} checks), {name}: "
             f"p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
             f"max {latencies[-1] * 1000:.2f} ms  (target p99 < 2 ms)")  # fmt: skip
    bare, bare_address = start_bare(token)
    try:
        for connections in CONCURRENCY:
            health, _ = asyncio.run(peak(address, [HEALTH], connections, args.seconds))
            floor, floor_cpu, _ = peak_and_cpu(bare, bare_address, requests, connections, args.seconds)
            grows_before = lease_grows(address, token)
            checks, check_cpu, latencies = peak_and_cpu(process, address, requests, connections, args.seconds)
            grows = lease_grows(address, token) - grows_before if grows_before >= 0 else None
            _log(f"{label}: back-to-back on {connections} connection(s): GET /healthz {health:,.0f}/s, "
                 f"bare POST endpoint {floor:,.0f}/s ({floor_cpu * 1e6:.0f} us CPU per request), "
                 f"POST /v1/check {checks:,.0f}/s ({checks / floor:.2f}x of the bare endpoint, target >= 0.8x), "
                 f"check p50 {percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms; "
                 f"serve's CPU {check_cpu * 1e6:.0f} us per check (one core: {1 / check_cpu:,.0f}/s)"
                 f"{'' if grows is None else f', {grows:,.0f} leases grown on Keeper'}"
                 f"  (target >= 5,000 checks/s)")  # fmt: skip
    finally:
        bare.terminate()
        bare.wait(60)


def lease_grows(address: str, token: str) -> float:
    """``tokenmeter_enforcer_lease_grows`` from serve's /metrics: leases grown on Keeper so far (-1: no Keeper)."""
    request = urllib.request.Request(f"http://{address}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        found = re.search(r"(?m)^tokenmeter_enforcer_lease_grows(?:\{[^}]*\})? (\S+)$", response.read().decode())
    return float(found.group(1)) if found else -1.0


def peak_and_cpu(
    process: subprocess.Popen[str],
    address: str,
    requests: list[bytes],
    connections: int,
    seconds: float,
) -> tuple[float, float, list[float]]:
    """Requests/s back to back, the server's CPU seconds per request, and the requests' latencies."""
    cpu_before = cpu_seconds(process.pid)
    rate, latencies = asyncio.run(peak(address, requests, connections, seconds))
    cpu = (cpu_seconds(process.pid) - cpu_before) / len(latencies)
    return rate, cpu, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    # The checks reserve ~125M tokens per 50,000 and nothing releases them (600 s timeout), so over a run the
    # departments' weekly token budgets fill: later phases measure checks near their limit, which Keeper
    # leases decide one by one. A scale of 1000 keeps every budget far from its limit (the steady state).
    parser.add_argument("--limit-scale", type=int, default=1, help="multiply the policy's limits (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokenmeter-bench-") as tmp:
        process, address, token = start_serve(Path(tmp) / "alone", limit_scale=args.limit_scale)
        try:
            measure("alone", process, address, token, args)
        finally:
            process.terminate()
            process.wait(60)
        zookeeper = ZooKeeperServer(Path(tmp) / "zookeeper")
        try:
            zookeeper.start()
        except ZooKeeperUnavailableError as exc:
            _log(f"no Keeper run: {exc}")
            return 0
        try:
            process, address, token = start_serve(Path(tmp) / "keeper", zookeeper.url("bench"), args.limit_scale)
            try:
                measure("with Keeper leases", process, address, token, args)
            finally:
                process.terminate()
                process.wait(60)
        finally:
            zookeeper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
