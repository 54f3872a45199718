"""The Prometheus rules, their unit tests and the Alertmanager example, checked with promtool and amtool.

`.ci/run` installs Debian's prometheus and prometheus-alertmanager packages (for the tools)
and sets TOKENMETER_REQUIRE_ALERT_TOOLS=1, so there a missing tool fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tokenmeter.collector.receiver_stats import ReceiverStats
from tokenmeter.enforcer.enforcer_stats import EnforcerStats

RULES = Path(__file__).resolve().parents[1] / "alert_rules"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("TOKENMETER_REQUIRE_ALERT_TOOLS"):
            pytest.fail(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
        pytest.skip(f"{name} is not installed (Debian: prometheus, prometheus-alertmanager)")
    return path


def _run(*command: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    output = _run(promtool, "check", "rules", "tokenmeter.rules.yml", cwd=RULES / "prometheus")
    assert "SUCCESS: 7 rules found" in output
    assert "SUCCESS" in _run(promtool, "test", "rules", "tokenmeter.rules.test.yml", cwd=RULES / "prometheus")


def test_the_prometheus_example_config_is_valid(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    token = tmp_path / "tokenmeter-token"
    token.write_text("example\n", encoding="utf-8")
    config = (RULES / "prometheus" / "prometheus.example.yml").read_text(encoding="utf-8")
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/secrets/tokenmeter-token", str(token)),
                                             encoding="utf-8")  # fmt: skip
    shutil.copy(RULES / "prometheus" / "tokenmeter.rules.yml", tmp_path)
    assert "SUCCESS" in _run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_the_alertmanager_example_is_valid() -> None:
    amtool = _tool("amtool")
    output = _run(amtool, "check-config", "alertmanager.yml", cwd=RULES / "alertmanager")
    assert "SUCCESS" in output and "5 receivers" in output


def test_every_metric_the_rules_use_is_one_tokenmeter_exports() -> None:
    """Metric names in the rules against what serve's and the enforcer's /metrics really render."""
    receiver = ReceiverStats()
    receiver.count_request("metrics", "http", "written", 1)
    receiver.observe_write(0.01)
    enforcer = EnforcerStats()
    enforcer.count_check("allow", 0.0001)
    enforcer.count_fail_open("client", 1)
    enforcer.count_policy_load("rejected")
    enforcer.count_refresh_error()
    exported = receiver.render() + enforcer.render(
        [("b", "user", "u", 0.5)], {"tokenmeter_enforcer_snapshot_age_seconds": ("age", 1.0)}
    )
    names = set(re.findall(r"^(tokenmeter_[a-z_]+)", exported, re.MULTILINE))
    rules = yaml.safe_load((RULES / "prometheus" / "tokenmeter.rules.yml").read_text(encoding="utf-8"))
    used = {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"\b(tokenmeter_[a-z_]+)", rule["expr"])}  # fmt: skip
    assert used and used <= names, sorted(used - names)
