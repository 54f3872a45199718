"""The production collector configuration, checked offline (otelcol-contrib cannot run here).

Every pipeline component is defined, every environment variable is documented, the
exporter writes tables `tokenmeter db migrate` creates, and the settings that keep the
totals exact (docs/accounting.md) are there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_TEXT = (ROOT / "collector" / "otelcol-config.yaml").read_text(encoding="utf-8")
CONFIG: dict[str, Any] = yaml.safe_load(CONFIG_TEXT)
SECTIONS = {"receivers": "receivers", "processors": "processors", "exporters": "exporters"}


def test_every_pipeline_component_and_extension_is_defined() -> None:
    service = CONFIG["service"]
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"] and pipeline["exporters"], name
        for section in SECTIONS:
            for component in pipeline.get(section, []):
                assert component in CONFIG[section], f"{name}: {component} is not defined in {section}"
    for extension in service["extensions"]:
        assert extension in CONFIG["extensions"]
    for protocol in CONFIG["receivers"]["otlp"]["protocols"].values():
        assert protocol["auth"]["authenticator"] in service["extensions"]  # no unauthenticated OTLP
    queue = CONFIG["exporters"]["clickhouse"]["sending_queue"]
    assert queue["storage"] in service["extensions"]
    defined = {name for section in (*SECTIONS, "extensions") for name in CONFIG[section]}
    used = {c for p in service["pipelines"].values() for s in SECTIONS for c in p.get(s, [])}
    assert defined - used - set(service["extensions"]) == set(), "defined but unused components"


def test_every_environment_variable_is_documented_with_its_default() -> None:
    readme = (ROOT / "collector" / "README.md").read_text(encoding="utf-8")
    references = re.findall(r"\$\{env:([A-Z_]+)(?::-([^}]*))?\}", CONFIG_TEXT)
    assert references
    for variable, default in references:
        row = next((line for line in readme.splitlines() if f"`{variable}`" in line), None)
        assert row is not None, f"{variable} is not in collector/README.md"
        if default:
            assert f"`{default}`" in row, f"{variable}: the README does not give its default {default}"
    assert "${env:OTELCOL_LISTEN_HOST:-127.0.0.1}" in CONFIG_TEXT  # loopback unless told otherwise


def test_the_exporter_keeps_every_batch_and_never_makes_tables() -> None:
    exporter = CONFIG["exporters"]["clickhouse"]
    assert exporter["create_schema"] is False
    queue = exporter["sending_queue"]
    assert queue["enabled"] and queue["block_on_overflow"] is True
    retry = exporter["retry_on_failure"]
    assert retry["enabled"] and retry["max_elapsed_time"] in ("0s", 0)
    if exporter.get("async_insert", True):
        assert exporter["connection_params"]["async_insert_deduplicate"] == "1"
    metrics = CONFIG["service"]["pipelines"]["metrics"]["processors"]
    assert metrics[0] == "memory_limiter" and "filter/unstored_metric_kinds" in metrics
    conditions = " ".join(CONFIG["processors"]["filter/unstored_metric_kinds"]["metrics"]["metric"])
    assert "METRIC_DATA_TYPE_SUMMARY" in conditions and "METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM" in conditions


def test_the_exporter_writes_tables_the_migrations_create(migrated_store: Any) -> None:
    exporter = CONFIG["exporters"]["clickhouse"]
    tables = {exporter["traces_table_name"], exporter["logs_table_name"],
              *(table["name"] for table in exporter["metrics_tables"].values())}  # fmt: skip
    existing = {row[0] for row in migrated_store.query("SHOW TABLES").result_rows}
    assert tables <= existing, sorted(tables - existing)
    assert set(exporter["metrics_tables"]) == {"gauge", "sum", "histogram"}  # the kinds not filtered out


@pytest.mark.parametrize("section", ["receivers", "processors", "exporters", "extensions"])
def test_component_names_are_known_otelcol_contrib_types(section: str) -> None:
    known = {
        "receivers": {"otlp"}, "processors": {"memory_limiter", "batch", "filter"},
        "exporters": {"clickhouse"}, "extensions": {"health_check", "bearertokenauth", "file_storage"},
    }  # fmt: skip
    for name in CONFIG[section]:
        assert name.split("/", 1)[0] in known[section], name
