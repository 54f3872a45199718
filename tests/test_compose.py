"""docker-compose.yml, the Dockerfile and Grafana provisioning, checked offline (no Docker engine here).

The compose file validates against the Compose specification's JSON schema (the copy
check-jsonschema ships); services, volumes, ports, mounts and environment variables agree
with each other, with the collector configuration and with the Dockerfile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = _validate(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "docker-compose.yml"  # the check can fail: a misspelt key is refused
    broken.write_text(COMPOSE_TEXT.replace("    restart: unless-stopped", "    restrat: unless-stopped", 1))
    assert _validate(broken).returncode != 0


def test_services_volumes_and_mounts_agree() -> None:
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        image = service.get("image", "")
        assert service.get("build") or re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: unpinned image {image}"
        assert not image.endswith(":latest")
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    built = [name for name, service in SERVICES.items() if service.get("build")]
    assert built == ["migrate"] and all(
        service.get("image") == "tokenmeter:local" for name, service in SERVICES.items()
        if name in {"migrate", "enforcer", "traffic"}
    )  # fmt: skip


def test_the_collector_gets_every_variable_its_configuration_needs() -> None:
    config_text = (ROOT / "collector" / "otelcol-config.yaml").read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{env:([A-Z_]+)\}", config_text))  # those without a default
    otelcol = SERVICES["otelcol"]
    assert needed <= set(otelcol["environment"]), sorted(needed - set(otelcol["environment"]))
    queue_mount = next(m for m in otelcol["volumes"] if m.startswith("otelcol-queue:"))
    assert queue_mount.split(":")[1] == otelcol["environment"]["OTELCOL_STORAGE_DIR"]
    config = yaml.safe_load(config_text)
    published = {port.split(":")[-1] for port in otelcol["ports"]}
    receiver_ports = {p["endpoint"].rsplit(":", 1)[1] for p in config["receivers"]["otlp"]["protocols"].values()}
    assert published == receiver_ports == {"4317", "4318"}


def test_commands_point_at_services_that_exist() -> None:
    enforcer = SERVICES["enforcer"]
    assert enforcer["ports"] == [f"127.0.0.1:9400:{enforcer['command'][enforcer['command'].index('--port') + 1]}"]
    traffic = SERVICES["traffic"]["command"]
    for flag, service in (("--otlp-endpoint", "otelcol"), ("--enforcer-url", "enforcer")):
        match = re.fullmatch(r"http://([\w-]+):(\d+)", traffic[traffic.index(flag) + 1])
        assert match is not None and match.group(1) == service
        assert any(port.endswith(f":{match.group(2)}") for port in SERVICES[service]["ports"])
    url = SERVICES["migrate"]["command"][SERVICES["migrate"]["command"].index("--clickhouse-url") + 1]
    assert "@clickhouse:8123/" in url and url == enforcer["command"][enforcer["command"].index("--clickhouse-url") + 1]


def test_grafana_provisioning_uses_variables_the_service_sets() -> None:
    grafana = SERVICES["grafana"]
    datasource = (ROOT / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{([A-Z_]+)\}", datasource)) <= set(grafana["environment"])
    provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "tokenmeter.yaml").read_text())
    mounted = {m.split(":")[1] for m in grafana["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    alerting = (ROOT / "alert_rules" / "grafana" / "tokenmeter-alerts.yaml").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{([A-Z_]+)\}", alerting)) <= set(grafana["environment"])
    assert "/etc/grafana/provisioning/alerting" in mounted


def test_every_required_secret_is_documented() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE_TEXT)) | set(re.findall(r"\$\{([A-Z_]+):-", COMPOSE_TEXT))
    missing = sorted(name for name in required if f"`{name}`" not in operations)
    assert not missing, f"docs/operations.md does not mention {missing}"


def test_the_dockerfile_copies_what_exists_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'tokenmeter = "tokenmeter.cli:main"' in pyproject and 'ENTRYPOINT ["tokenmeter"]' in dockerfile
    for extra in re.search(r"\.\[([a-z,-]+)\]", dockerfile).group(1).split(","):  # type: ignore[union-attr]
        assert re.search(rf"^{extra} = ", pyproject, re.MULTILINE), extra
