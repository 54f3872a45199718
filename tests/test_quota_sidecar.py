"""`tokenmeter enforcer` as a process: its HTTP API, concurrency, policy reloads under load, `tokenmeter check`."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from enforcer_process import TOKEN, EnforcerProcess, migrate

GOES_AHEAD = {"allow", "warn", "downgrade"}


def team_policy(limit: int, *, padding: int = 200) -> str:
    text = f"""
budgets:
  - name: team
    scope: department
    subject: ops
    period: month
    limit: {{tokens: {limit}}}
    action: deny
"""
    # Padded to one size, so a test can change the file without changing its size.
    return text + "#" * (padding - len(text)) + "\n"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enforcer") / "chdb"
    migrate(path)
    return path


@pytest.fixture
def enforcer(store_dir: Path, tmp_path: Path) -> Iterator[EnforcerProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(team_policy(1000), encoding="utf-8")
    with EnforcerProcess(store_dir, policy, "--settle-seconds", "600") as process:
        process.policy_path = policy  # type: ignore[attr-defined]
        yield process


def test_everything_but_health_needs_the_token(enforcer: EnforcerProcess) -> None:
    assert httpx.get(f"{enforcer.url}/healthz", timeout=10).json()["status"] == "ok"
    for method, path in (("POST", "/v1/check"), ("POST", "/v1/release"), ("GET", "/v1/usage"),
                         ("GET", "/v1/policy"), ("GET", "/metrics")):  # fmt: skip
        response = httpx.request(method, f"{enforcer.url}{path}", json={}, timeout=10)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(method, f"{enforcer.url}{path}", json={}, timeout=10,
                              headers={"authorization": "Bearer wrong"})  # fmt: skip
        assert wrong.status_code == 401
    wrong_method = httpx.get(f"{enforcer.url}/v1/check", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert TOKEN not in "".join(enforcer.stderr_lines)
    assert enforcer.info["token"] == "TOKENMETER_ENFORCER_TOKEN"


def test_check_answers_the_decision_and_release_gives_the_room_back(enforcer: EnforcerProcess) -> None:
    first = enforcer.check(user='o"brien', department="ops", app="kb", model="gpt-4o", input_tokens=600,
                           max_output_tokens=200)  # fmt: skip
    assert first["decision"] == "allow" and first["effective_model"] == "gpt-4o"
    assert first["reservation_id"]
    second = enforcer.check(user="x", department="ops", model="gpt-4o", input_tokens=10, max_output_tokens=0)
    assert second["decision"] == "warn"
    assert (second["budget"], second["subject"], second["used_tokens"], second["limit_tokens"]) == ("team", "ops", 800,
                                                                                                      1000)  # fmt: skip
    assert second["ratio"] == pytest.approx(0.8) and second["threshold"] == 0.8
    assert second["resets_at"].endswith("+00:00") and second["timezone"] == "Asia/Shanghai"
    usage = enforcer.get("/v1/usage?budget=team").json()["budgets"]
    assert [(row["subject"], row["used_tokens"], row["reserved_tokens"]) for row in usage] == [("ops", 0, 810)]
    # Released, but still held until the store can show it (--settle-seconds 600 here).
    released = httpx.post(f"{enforcer.url}/v1/release", json={"reservation_id": first["reservation_id"]},
                          headers=enforcer.headers, timeout=10)  # fmt: skip
    assert released.json() == {"released": True}
    again = httpx.post(f"{enforcer.url}/v1/release", json={"reservation_id": first["reservation_id"]},
                       headers=enforcer.headers, timeout=10)  # fmt: skip
    assert again.json() == {"released": False}
    metrics = enforcer.get("/metrics").text
    assert 'tokenmeter_enforcer_checks_total{decision="allow"} 1' in metrics
    assert 'tokenmeter_enforcer_checks_total{decision="warn"} 1' in metrics
    assert 'tokenmeter_quota_utilisation_ratio{budget="team",scope="department",subject="ops"} 0.81' in metrics
    assert "tokenmeter_enforcer_check_seconds_count 2" in metrics
    policy = enforcer.get("/v1/policy").json()
    assert policy["source"] == str(enforcer.policy_path)  # type: ignore[attr-defined]
    assert policy["policy"]["budgets"][0]["name"] == "team" and policy["last_error"] is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"user": "a"}, "model: Field required"),
        ({"model": "m", "input_tokens": -1}, "input_tokens: Input should be greater than or equal to 0"),
        ({"model": "m", "user": 7}, "user: Input should be a valid string"),
        ({"model": "m", "user": "u" * 5000}, "user: String should have at most 1024 characters"),
    ],
)
def test_bad_checks_get_400_naming_the_field(enforcer: EnforcerProcess, body: dict[str, object], problem: str) -> None:
    response = httpx.post(f"{enforcer.url}/v1/check", json=body, headers=enforcer.headers, timeout=10)
    assert response.status_code == 400
    assert problem in response.json()["error"]


def test_not_json_and_huge_bodies_are_refused(enforcer: EnforcerProcess) -> None:
    broken = httpx.post(f"{enforcer.url}/v1/check", content=b"{nope", headers=enforcer.headers, timeout=10)
    assert broken.status_code == 400 and "Invalid JSON" in broken.json()["error"]
    huge = httpx.post(f"{enforcer.url}/v1/check", content=b" " * 100_000, headers=enforcer.headers, timeout=10)
    assert huge.status_code == 413


def test_100_concurrent_checks_with_room_for_10_let_exactly_10_through(enforcer: EnforcerProcess) -> None:
    barrier = threading.Barrier(100)
    limits = httpx.Limits(max_connections=100)
    with httpx.Client(limits=limits, timeout=60) as client:

        def one(index: int) -> str:
            barrier.wait()
            return enforcer.check(client, user=f"user{index}", department="ops", model="gpt-4o",
                                  input_tokens=50, max_output_tokens=50)["decision"]  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            decisions = Counter(pool.map(one, range(100)))
    assert sum(decisions[action] for action in GOES_AHEAD) == 10, decisions
    assert decisions["deny"] == 90
    usage = enforcer.get("/v1/usage?budget=team").json()["budgets"][0]
    assert usage["reserved_tokens"] == 1000  # limit reached exactly: no overshoot


def _rewrite_keeping_stat(path: Path, text: str) -> None:
    """New content, same inode, size and mtime: only SIGHUP can tell."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with path.open("r+", encoding="utf-8") as handle:
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_policy_reloads_under_load_without_a_failed_check(enforcer: EnforcerProcess) -> None:
    policy: Path = enforcer.policy_path  # type: ignore[attr-defined]
    # 100 tokens held for department ops: 10 % of a 1000 limit, all of a 100 limit.
    assert enforcer.check(department="ops", model="m", input_tokens=100, max_output_tokens=0)["decision"] == "allow"
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    seen.append(enforcer.check(client, user="load", department="ops", model="m", dry_run=True,
                                               input_tokens=1, max_output_tokens=0)["decision"])  # fmt: skip
                except Exception as exc:  # any failed check fails the test
                    failures.append(repr(exc))

    def wait_for(decision: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if seen and seen[-1] == decision:
                return
            time.sleep(0.05)
        raise AssertionError(f"never saw {decision}; last {seen[-5:]}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for("allow")
        policy.write_text(team_policy(100), encoding="utf-8")  # the file changed: reloaded
        wait_for("deny")
        policy.write_text("budgets: [{name: team, scope: nowhere}]\n", encoding="utf-8")  # broken: kept
        deadline = time.monotonic() + 30
        while enforcer.get("/v1/policy").json()["last_error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        document = enforcer.get("/v1/policy").json()
        assert "budgets[0].scope" in document["last_error"] and "line 1" in document["last_error"]
        assert document["policy"]["budgets"][0]["limit"]["tokens"] == 100  # the previous policy stays
        count = len(seen)
        time.sleep(0.5)
        assert len(seen) > count and seen[-1] == "deny"
        policy.write_text(team_policy(100), encoding="utf-8")
        deadline = time.monotonic() + 30
        while enforcer.get("/v1/policy").json()["last_error"] is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # loaded once settled (the file changed in place): the error is gone
        assert enforcer.get("/v1/policy").json()["last_error"] is None
        _rewrite_keeping_stat(policy, team_policy(1000))  # unnoticed until SIGHUP
        time.sleep(1.0)
        assert seen[-1] == "deny"
        enforcer.signal(signal.SIGHUP)
        wait_for("allow")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert len(seen) > 100
    metrics = enforcer.get("/metrics").text
    assert 'tokenmeter_enforcer_policy_loads_total{outcome="rejected"} 1' in metrics
    assert "policy not reloaded, the previous one stays in force" in "".join(enforcer.stderr_lines)


def test_tokenmeter_check_prints_the_decision_without_reserving(enforcer: EnforcerProcess) -> None:
    env = {**os.environ, "TOKENMETER_ENFORCER_TOKEN": TOKEN}
    command = [sys.executable, "-m", "tokenmeter.cli", "check", "--url", enforcer.url, "--department", "ops",
               "--model", "gpt-4o", "--input-tokens", "900", "--max-output-tokens", "100"]  # fmt: skip
    for _ in range(2):  # the same answer twice: a dry run holds nothing
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        decision = json.loads(result.stdout)
        assert decision["decision"] == "allow" and decision["reservation_id"] is None
    assert enforcer.get("/v1/usage").json()["budgets"] == []
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                             env={**env, "TOKENMETER_ENFORCER_TOKEN": "wrong"})  # fmt: skip
    assert refused.returncode == 1 and "refused the token" in refused.stderr


def test_tokenmeter_check_without_an_enforcer_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenmeter.cli", "check", "--url", "http://127.0.0.1:9", "--model", "m"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot reach the enforcer at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_enforcer_refuses_an_unmigrated_store_and_a_broken_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(team_policy(1000), encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"(?s)exited \(2\).*run `tokenmeter db migrate --clickhouse-url chdb://"):
        EnforcerProcess(tmp_path / "empty", policy).start()
    assert not (tmp_path / "empty").exists()  # the enforcer never migrates: it makes no empty store either
    policy.write_text("budgets:\n  - name: team\n    scope: user\n    limit: {tokens: -5}\n", encoding="utf-8")
    store = tmp_path / "store"
    migrate(store)
    with pytest.raises(RuntimeError, match=r"(?s)exited \(2\).*line 4, budgets\[0\]\.limit\.tokens"):
        EnforcerProcess(store, policy).start()


def _usage_of_ops(store: Path) -> None:
    from otlp_requests import now_ns, usage_counter_request

    from tokenmeter import semconv
    from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
    from tokenmeter.collector.payloads import Signal, decode_protobuf
    from tokenmeter.store import open_store

    request = usage_counter_request("alice", [(now_ns(), 10)], now_ns() - 10**9)
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0].attributes.add(
        key=semconv.TM_DEPARTMENT).value.string_value = "ops"  # fmt: skip
    client = open_store(f"chdb://{store}")
    try:
        payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
        insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))
    finally:
        client.close()


def test_health_is_503_while_usage_cannot_be_read(tmp_path: Path) -> None:
    store = tmp_path / "chdb"
    migrate(store)
    _usage_of_ops(store)  # with no usage stored, nothing is read from files: nothing can fail
    policy = tmp_path / "policy.yaml"
    policy.write_text(team_policy(1000), encoding="utf-8")
    with EnforcerProcess(store, policy) as process:
        assert httpx.get(f"{process.url}/healthz", timeout=30).status_code == 200
        os.rename(store, store.with_name("chdb-away"))  # the store's files gone from under the process
        try:
            deadline, response = time.monotonic() + 60, httpx.get(f"{process.url}/healthz", timeout=30)
            while response.status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.2)
                response = httpx.get(f"{process.url}/healthz", timeout=30)
        finally:
            os.rename(store.with_name("chdb-away"), store)
        assert response.status_code == 503, response.text
        document = response.json()
        assert document["status"] == "unavailable"
        assert document["problems"][0].startswith("the enforcer cannot read usage from the store"), document
