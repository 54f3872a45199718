"""An enforcer that sees another one on its store without shared headroom says so: never silently wrong."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from enforcer_process import TOKEN, EnforcerProcess, migrate
from waiting import wait_for

from tokenmeter.store import open_store

POLICY = "budgets:\n  - {name: per-user, scope: user, period: day, limit: {tokens: 10000}}\n"


def _heartbeat_of_another_enforcer(store: Path, coordination: str) -> None:
    """The row another enforcer process on this store would have written moments ago."""
    client = open_store(f"chdb://{store}")
    try:
        client.insert("enforcer_replicas", [["other-host-4242-abcdef", "other-host", 4242, coordination,
                                             datetime.now(UTC).replace(tzinfo=None)]],
                      column_names=["replica", "host", "pid", "coordination", "seen_at"])  # fmt: skip
    finally:
        client.close()


def _health(process: EnforcerProcess) -> dict[str, object]:
    return dict(httpx.get(f"{process.url}/healthz", timeout=30).json())


def test_a_second_enforcer_without_coordination_is_reported(tmp_path: Path) -> None:
    store, policy = tmp_path / "chdb", tmp_path / "policy.yaml"
    migrate(store)
    policy.write_text(POLICY, encoding="utf-8")
    os.utime(policy, (time.time() - 60, time.time() - 60))
    _heartbeat_of_another_enforcer(store, coordination="")
    with EnforcerProcess(store, policy) as process:
        assert wait_for(lambda: bool(_health(process)["warnings"]))
        [warning] = _health(process)["warnings"]  # type: ignore[misc]
        assert "another enforcer uses this store (replica other-host-4242-abcdef" in warning
        assert "set the same TOKENMETER_COORDINATION_URL on every replica" in warning
        metrics = httpx.get(f"{process.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30).text
        assert "tokenmeter_enforcer_uncoordinated_replicas 1\n" in metrics
        assert _health(process)["status"] == "ok"  # a warning, not an outage: both keep deciding
    assert any("another enforcer uses this store" in line for line in process.stderr_lines)


def test_alone_on_its_store_an_enforcer_warns_of_nothing(tmp_path: Path) -> None:
    store, policy = tmp_path / "chdb", tmp_path / "policy.yaml"
    migrate(store)
    policy.write_text(POLICY, encoding="utf-8")
    os.utime(policy, (time.time() - 60, time.time() - 60))
    with EnforcerProcess(store, policy) as process:
        health = _health(process)
        assert health["warnings"] == [] and str(health["replica"]).startswith(os.uname().nodename)
