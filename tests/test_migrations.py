from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenmeter.cli import main
from tokenmeter.store.client import open_store
from tokenmeter.store.migrations import Migration, MigrationError, RenderOptions, load_migrations, migrate, render_all


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
