"""Department questions: the projection and the day-level table give the users' totals; plans use them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.store import open_store
from tokenmeter.store.migrations import RenderOptions, load_migrations, migrate
from tokenmeter.store.usage_queries import period_usage

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from otlp_requests import usage_counter_request

    client = open_store(f"chdb://{tmp_path_factory.mktemp('plan') / 'chdb'}")
    # usage recorded before the day-level table existed must be copied into it by its migration
    # (the store as it was then: the migrations before it; later ones build on it)
    [day_level] = [m for m in load_migrations() if m.name == "usage_counter_daily"]
    migrate(client, RenderOptions(), migrations=[m for m in load_migrations() if m.version < day_level.version])
    started = int((NOW - timedelta(hours=2)).timestamp()) * 10**9
    for user in range(30):
        request = usage_counter_request(f"u{user}", [(started + m * 60 * 10**9, (m + 1) * (user + 1))
                                                     for m in range(5)], started)  # fmt: skip
        for point in request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points:
            point.attributes.add(key=semconv.TM_DEPARTMENT).value.string_value = f"d{user % 3}"
        payload = decode_protobuf(Signal.METRICS, request.SerializeToString())
        insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))
        if user == 14:  # half the users before the migration, half after
            migrate(client, RenderOptions())
    yield client
    client.close()


def test_department_totals_are_the_sum_of_their_users(store) -> None:
    start, end = NOW - timedelta(days=1), NOW + timedelta(minutes=1)
    users = {u.subject: u.input_tokens for u in period_usage(store, start, end, "user")}
    assert users["u4"] == 5 * 5
    for department in range(3):
        [usage] = period_usage(store, start, end, "department", f"d{department}")
        assert usage.input_tokens == sum(v for k, v in users.items() if int(k[1:]) % 3 == department)


def test_one_department_reads_the_projection(store) -> None:
    plan = "\n".join(row[0] for row in store.query(
        "EXPLAIN projections = 1 SELECT series_id, max(value_max) FROM usage_counter_minutely "
        "WHERE department = 'd1' GROUP BY series_id"
    ).result_rows)  # fmt: skip
    assert "by_department" in plan


def test_midnight_periods_read_the_day_level_table_with_the_same_totals(store) -> None:
    midnight = NOW.replace(hour=0, minute=0)
    start, end = midnight - timedelta(days=1), midnight + timedelta(days=1)
    users = {u.subject: u.input_tokens for u in period_usage(store, start, end, "user")}  # minutely table
    assert len(users) == 30
    [(daily_rows,)] = store.query("SELECT count() FROM usage_counter_daily").result_rows
    assert daily_rows > 0
    for department in range(3):
        [usage] = period_usage(store, start, end, "department", f"d{department}")  # day-level table
        assert usage.input_tokens == sum(v for k, v in users.items() if int(k[1:]) % 3 == department)
    plan = "\n".join(row[0] for row in store.query(
        "EXPLAIN indexes = 1 SELECT count() FROM usage_counter_daily WHERE department = 'd1'"
    ).result_rows)  # fmt: skip
    assert "department" in plan and "PrimaryKey" in plan
