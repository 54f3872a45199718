from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenmeter.cli import main
from tokenmeter.store.client import open_store
from tokenmeter.store.migrations import (
    Migration,
    MigrationError,
    RenderOptions,
    load_migrations,
    migrate,
    render,
    render_all,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[object]:
    client = open_store(f"chdb://{tmp_path / 'chdb'}")
    yield client
    client.close()


def test_apply_rerun_and_tamper(store) -> None:
    result = migrate(store, RenderOptions())
    assert [m.version for m in result.applied] == [m.version for m in load_migrations()]
    tables = {
        row[0] for row in store.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    }
    for name in (
        "otel_traces",
        "otel_metrics_sum",
        "otel_metrics_gauge",
        "otel_metrics_histogram",
        "otel_logs",
        "llm_usage",
        "usage_counter_series",
        "usage_counter_minutely",
        "usage_daily",
        "usage_reconciliation",
    ):
        assert name in tables
    again = migrate(store, RenderOptions())
    assert again.applied == []
    assert len(again.already_applied) == len(load_migrations())
    first = load_migrations()[0]
    tampered = [Migration(first.version, first.name, first.sql + "\n-- edited\n"), *load_migrations()[1:]]
    with pytest.raises(MigrationError, match=first.file_name):
        migrate(store, RenderOptions(), migrations=tampered)


def test_otel_traces_keeps_only_the_trace_id_and_duration_indexes(store) -> None:
    # 0012 dropped the bloom filters over every attribute key and value: hashed at insert and
    # at every merge, they were a fifth of span ingest CPU (docs/benchmarks.md)
    migrate(store, RenderOptions())
    indexes = store.query(
        "SELECT name, expr FROM system.data_skipping_indices WHERE database = currentDatabase()"
        " AND table = 'otel_traces' ORDER BY name"
    ).result_rows
    assert indexes == [("idx_duration", "Duration"), ("idx_trace_id", "TraceId")]


def test_cluster_rendering_is_replicated_everywhere() -> None:
    for migration, statements in render_all(RenderOptions(cluster="prod")):
        for statement in statements:
            if statement.startswith("INSERT INTO"):  # a backfill runs once, through the Distributed tables
                assert "_local" not in statement
                continue
            assert "ON CLUSTER 'prod'" in statement, (migration.file_name, statement[:80])
            match = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
            if match is None:
                continue
            engine = re.search(r"ENGINE = (\w+)", statement)
            assert engine is not None
            if match.group(1).endswith("_local"):
                assert engine.group(1).startswith("Replicated")
                assert "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'" in statement
                local = match.group(1)
                assert any(f"Distributed('prod', currentDatabase(), {local}," in s for s in statements)
            elif re.fullmatch(r"otlp_\w+_in", match.group(1)):
                # the receiver's per-node input tables keep nothing; their views write to the Distributed tables
                assert engine.group(1) == "Null"
            else:
                assert engine.group(1) == "Distributed"
    ingest_views = {  # as last defined (0013 made the traces view again)
        re.search(r"VIEW IF NOT EXISTS (\w+)", s).group(1): s  # type: ignore[union-attr]
        for _, st in render_all(RenderOptions(cluster="prod")) for s in st if "FROM otlp_" in s
    }.values()  # fmt: skip
    assert len(ingest_views) == 5
    assert all(re.search(r"TO otel_\w+ AS", view) and "_local AS" not in view for view in ingest_views)
    single = "\n".join(s for _, st in render_all(RenderOptions()) for s in st)
    assert "ON CLUSTER" not in single and "Replicated" not in single and "${" not in single


def test_ttl_days_zero_means_no_raw_ttl() -> None:
    sql = "\n".join(s for _, st in render_all(RenderOptions(raw_ttl_days=0)) for s in st)
    assert "toIntervalDay(30)" not in sql and "toIntervalDay(400)" in sql


def test_bad_cluster_name() -> None:
    with pytest.raises(MigrationError, match="cluster name"):
        RenderOptions(cluster="x'; DROP")


def test_cli_dry_run_and_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "migrate", "--dry-run", "--cluster", "c1", "--ttl-days", "7"]) == 0
    out = capsys.readouterr().out
    assert "ON CLUSTER 'c1'" in out and "toIntervalDay(7)" in out
    url = f"chdb://{tmp_path / 'db'}"
    assert main(["db", "migrate", "--clickhouse-url", url]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["applied"] and summary["already_applied"] == []
    assert "applying 0001_otel_tables.sql" in captured.err
    assert main(["db", "migrate", "--clickhouse-url", url]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == []


# The checksums stores recorded when these files were applied (before the files spelled names as ${name(C)}).
RECORDED_CHECKSUMS = {
    "0001_otel_tables.sql": "02b3f0409bc8344ed0cd0cd58b3bf85370b4b963de4aae086ce3022f57970e2a",
    "0002_llm_usage.sql": "519a7e117af7c250cac328689b1536622b3bd2738aad4f86b97b02d568b4f068",
    "0003_usage_counters.sql": "0788b9197f7ec37a5ca0c95bd02176a1a134dff5b68c97a6fec4e1173508385a",
    "0004_usage_views.sql": "be4431d34d7f4e8abeb8d8dffff8f83e3052128205438a1863343a745dc94d7d",
    "0006_otlp_ingest.sql": "74f8981e19a80a3f5d92ed125748799fedfb1736e6b9d419e452b1d9f9a50027",
    "0007_department_projection.sql": "aa00d41648a9dd6ae5300894b7012637afc04803f10cc2c0b3b7e557ab9f0f5d",
    "0008_usage_counter_daily.sql": "9fe18a63261101cd6f2d22c152511af801d476b4d8acd142f40c5ca480a901bf",
    "0009_quota_events.sql": "6585ba045252931afff6596a91f0c02e1e4897aae2e0569239cb27bcc8bf4c19",
    "0010_llm_usage_without_hops.sql": "af19219726eeaadcee44de82dfce7cef788715c21b67a6e69e222690e417d39e",
    "0011_quota_utilisation.sql": "0d85fe008078a3e6cc97850dcc5b446d64e2ebc5c46ad3c9cc84f061ea06f1d6",
    "0012_span_attribute_indexes.sql": "19974563609b58240db1b92f1ba8bf3831636cf725cfef3d33eee8dd0c801c18",
    "0013_otlp_traces_parallel_arrays.sql": "cf37c426646304f191f367cd39d01e9a548ea6fe1500eca1e8b176c804f1a3a1",
    "0014_sane_counter_points.sql": "4de704cb977f8f28bd253bb930a5a2ca5d621f2b21f8c00aed59004dd1ed0c46",
    "0015_enforcer_replicas.sql": "a9991e5d4cd8a3530df876238e161a035f5af71b44a7a13b9718d1cd7b840fc3",
}


def test_names_come_from_semconv_and_applied_files_keep_their_checksums() -> None:
    migrations = load_migrations()
    assert {m.file_name: m.checksum for m in migrations if m.file_name in RECORDED_CHECKSUMS} == RECORDED_CHECKSUMS
    for migration in migrations:
        # Every dotted telemetry name is a placeholder: no file spells one itself.
        assert not re.findall(r"'[a-z_]+(?:\.[a-z_]+)+'", migration.sql), migration.file_name
    (statement,) = render("SELECT Attributes[${name(ENDUSER_ID)}] FROM t;", RenderOptions())
    assert statement == "SELECT Attributes['enduser.id'] FROM t"
    with pytest.raises(MigrationError, match=r"bad.sql: .*no name 'ENDUSER'"):
        render("SELECT ${name(ENDUSER)};", RenderOptions(), "bad.sql")
