"""`tokenmeter reprice` on chDB: calls stored through the embedded receiver's insert, repriced at a catalog with a
mid-month price change, input-length tiers, cache reads and reasoning; every amount hand-computed to the last digit.

The catalog: tm-chat costs (per 1M tokens, CNY) 2.00 input, 0.50 cached input, 8.00 output, 10.00 reasoning until
2026-11-15; from then 1.00 / 0.25 / 4.00 (reasoning at the output rate) up to 32K input tokens, 3.00 / 0.75 / 12.00
above. The calls were stored as an older tokenmeter billed them (flat, or at the old price after the change).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from stored_calls import call_attributes, ns, store_call_counters, store_calls

from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.cli.main import main
from tokenmeter.cli.reprice_calls import parse_price_from, reprice, stored_cost
from tokenmeter.store import open_store, reprice_queries
from tokenmeter.store.migrations import RenderOptions, load_migrations, migrate

CATALOG = """\
- match: tm-chat*
  provider: openai
  price:
    - {input: "2.00", output: "8.00", cached_input: "0.50", reasoning: "10.00", per: 1M, currency: CNY}
    - from: 2026-11-15
      per: 1M
      currency: CNY
      input: "1.00"
      output: "4.00"
      cached_input: "0.25"
      tiers:
        - {up_to: 32K, input: "1.00", output: "4.00"}
        - {input: "3.00", output: "12.00", cached_input: "0.75"}
- match: tm-premium*
  price: {input: "30.00", output: "60.00", per: 1M, currency: CNY}
- match: tm-usd*
  price: {input: "1.00", output: "2.00", per: 1M, currency: USD}
- match: tm-local*
  price: {input: "0.30", output: "0.60", per: 1M, currency: CNY, virtual: true}
- match: tm-fine*
  price: {input: "0.1234567", output: "0", per: 1M, currency: CNY}
"""
# The flat catalog of before: every token type at input or output rate, no date, no tiers.
FLAT_CATALOG = """\
- match: tm-chat*
  price: {input: "2.00", output: "8.00", per: 1M, currency: CNY}
"""
CACHE_READ = semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
REASONING = semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
SUB_MICROSECOND = ns(datetime(2026, 11, 20, 9, tzinfo=UTC)) + 123_456_789  # two calls start at this nanosecond


def nov(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def call(name: str, model: str, input_tokens: int, output_tokens: int, cost: str | None, **more: Any) -> dict[str, Any]:
    """A stored call named by its conversation id (the tests find rows by it)."""
    amount = None if cost is None else Decimal(cost)
    return call_attributes(model, input_tokens, output_tokens, amount, **{semconv.GEN_AI_CONVERSATION_ID: name,
                           semconv.TM_PROMPT_HASH: f"hash-{name}", **more})  # fmt: skip


DOWNGRADED = {semconv.TM_QUOTA_DECISION: "downgrade", semconv.TM_REQUESTED_MODEL: "tm-premium",
              semconv.TM_EFFECTIVE_MODEL: "tm-chat"}  # fmt: skip
REFUSED = {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "tm-chat", semconv.ENDUSER_ID: "alice",
           semconv.GEN_AI_CONVERSATION_ID: "refused", semconv.TM_QUOTA_DECISION: "deny",
           semconv.ERROR_TYPE: "QuotaExceeded"}  # fmt: skip
CALLS: list[tuple[datetime | int, dict[str, Any]]] = [
    (datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), call("october", "tm-chat", 100, 50, "0.0006")),
    (nov(2, 8), call("pre-0020", "tm-chat", 100, 50, "0.0006")),  # no token-type attributes: plain input/output
    (nov(3, 10), call("cached-early", "tm-chat", 1000, 500, "0.006", **{CACHE_READ: 600, REASONING: 200})),
    (nov(10, 12), call("usd-new", "tm-usd-1", 300, 100, None)),  # unpriced when billed, priced now
    (nov(10, 12, 1), call("gone", "tm-gone", 10, 10, "0.001")),  # priced when billed, unknown now
    (nov(10, 12, 2), call("local", "tm-local-1", 100, 100, "0.0001", virtual=True)),
    (nov(10, 12, 3), call("fine", "tm-fine", 1, 0, "0.0000001234567")),  # 13 decimals: stored cut to 12
    (SUB_MICROSECOND, call("cached-late", "tm-chat", 1000, 500, "0.0055", **{CACHE_READ: 600, REASONING: 200})),
    (
        SUB_MICROSECOND,
        call("cached-late-bob", "tm-chat", 1000, 500, "0.0055", user="bob", **{CACHE_READ: 600, REASONING: 200}),
    ),
    (
        nov(20, 9, 5),
        call(
            "long",
            "tm-chat",
            40000,
            1000,
            "0.1095",
            **{CACHE_READ: 10000, semconv.TM_PRICE_FROM: "2026-11-15", semconv.TM_PRICE_TIER: 1},
        ),
    ),
    (nov(20, 10), call("downgraded", "tm-chat", 2000, 100, "0.0024", **DOWNGRADED)),
    (nov(20, 11), call("cache-hit", "tm-chat", 0, 0, "0", **{semconv.TM_CACHE_HIT: True})),
    (nov(20, 12), REFUSED),
    (datetime(2026, 12, 1, tzinfo=UTC), call("december", "tm-chat", 100, 50, "0.0006")),
]
COUNTED = {"tm-chat": 12, "tm-usd-1": 1, "tm-gone": 1, "tm-local-1": 1, "tm-fine": 1}  # 16; llm_usage has 11 sent

# name -> (cost, currency, virtual, unpriced, price_from, price_tier) after the reprice, by hand:
AFTER = {
    "october": (Decimal("0.0006"), "CNY", False, False, "", ""),  # outside the range: untouched
    "pre-0020": (Decimal("0.0006"), "CNY", False, False, "", ""),  # 100 x 2 + 50 x 8
    "cached-early": (Decimal("0.0055"), "CNY", False, False, "", ""),  # 400 x 2 + 600 x 0.5 + 300 x 8 + 200 x 10
    "usd-new": (Decimal("0.0005"), "USD", False, False, "", ""),  # 300 x 1 + 100 x 2
    "gone": (None, "", False, True, "", ""),
    "local": (Decimal("0.00009"), "CNY", True, False, "", ""),  # 100 x 0.3 + 100 x 0.6
    "fine": (Decimal("0.000000123456"), "CNY", False, False, "", ""),  # 0.1234567 / 1M, cut to 12 decimals
    # 400 x 1 + 600 x 0.25 + 300 x 4 + 200 x 4 (reasoning at the tier's output rate)
    "cached-late": (Decimal("0.00255"), "CNY", False, False, "2026-11-15T00:00:00+00:00", "0"),
    "cached-late-bob": (Decimal("0.00255"), "CNY", False, False, "2026-11-15T00:00:00+00:00", "0"),
    "long": (Decimal("0.1095"), "CNY", False, False, "2026-11-15", "1"),  # 30000 x 3 + 10000 x 0.75 + 1000 x 12
    "downgraded": (Decimal("0.0024"), "CNY", False, False, "2026-11-15T00:00:00+00:00", "0"),  # tm-chat, as sent
    "cache-hit": (Decimal(0), "CNY", False, False, "", ""),
    "refused": (None, "", False, False, "", ""),
    "december": (Decimal("0.0006"), "CNY", False, False, "", ""),
}
REWRITTEN = {"cached-early", "usd-new", "gone", "local", "cached-late", "cached-late-bob", "downgraded"}


def money(currency: str | None, virtual: bool = False) -> dict[str, Any]:
    return {"currency": currency, "virtual": virtual, "unpriced": currency is None}


def counts(calls: int, rewritten: int, old: str, new: str, difference: str, priced: int = 0,
           unpriced: int = 0) -> dict[str, Any]:  # fmt: skip
    return {"calls": calls, "rewritten": rewritten, "became_priced": priced, "became_unpriced": unpriced,
            "old_cost": old, "new_cost": new, "difference": difference}  # fmt: skip


UNDATED = [{"from": None, "tier": None}]
NOV_15 = "2026-11-15T00:00:00+00:00"
EXPECTED_ROWS = [
    {"day": "2026-11-02", "model": "tm-chat", **money("CNY"), **counts(1, 0, "0.0006", "0.0006", "0"),
     "prices_now": UNDATED},
    {"day": "2026-11-03", "model": "tm-chat", **money("CNY"), **counts(1, 1, "0.006", "0.0055", "-0.0005"),
     "prices_now": UNDATED},
    {"day": "2026-11-10", "model": "tm-fine", **money("CNY"),
     **counts(1, 0, "0.000000123456", "0.000000123456", "0"), "prices_now": UNDATED},
    {"day": "2026-11-10", "model": "tm-gone", **money(None), **counts(1, 1, "0", "0", "0", unpriced=1),
     "prices_now": []},
    {"day": "2026-11-10", "model": "tm-gone", **money("CNY"), **counts(0, 0, "0.001", "0", "-0.001"), "prices_now": []},
    {"day": "2026-11-10", "model": "tm-local-1", **money("CNY", True), **counts(1, 1, "0.0001", "0.00009", "-0.00001"),
     "prices_now": UNDATED},
    {"day": "2026-11-10", "model": "tm-usd-1", **money("USD"), **counts(1, 1, "0", "0.0005", "0.0005", priced=1),
     "prices_now": UNDATED},
    {"day": "2026-11-20", "model": "tm-chat", **money("CNY"), **counts(4, 3, "0.1229", "0.117", "-0.0059"),
     "prices_now": [{"from": NOV_15, "tier": 0}, {"from": NOV_15, "tier": 1}]},
]  # fmt: skip
EXPECTED_TOTALS = [
    {**money(None), **counts(1, 1, "0", "0", "0", unpriced=1)},
    {**money("CNY"), **counts(7, 4, "0.130500123456", "0.123100123456", "-0.0074")},
    {**money("CNY", True), **counts(1, 1, "0.0001", "0.00009", "-0.00001")},
    {**money("USD"), **counts(1, 1, "0", "0.0005", "0.0005", priced=1)},
]


@dataclass
class Store:
    url: str
    catalog: Path
    flat_catalog: Path

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        client = open_store(self.url, create=False)
        try:
            return [tuple(row) for row in client.query(sql).result_rows]
        finally:
            client.close()

    def costs(self) -> dict[str, tuple[Any, ...]]:
        rows = self.query("SELECT conversation, cost, currency, virtual, unpriced, price_from, price_tier "
                          "FROM llm_usage FINAL")  # fmt: skip
        return {str(row[0]): row[1:] for row in rows}

    def stored_rows(self) -> int:
        [(count,)] = self.query("SELECT count() FROM llm_usage")
        return int(count)

    def reprice(self, capsys: pytest.CaptureFixture[str], *argv: str, catalog: Path | None = None) -> dict[str, Any]:
        code = main(["reprice", "--from", "2026-11-01", "--to", "2026-11-30", "--clickhouse-url", self.url,
                     "--models", str(catalog or self.catalog), "--format", "json", *argv])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        document: dict[str, Any] = json.loads(out)
        return document


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"chdb://{tmp_path / 'chdb'}"
    client = open_store(url)
    try:
        migrate(client, RenderOptions())
        store_calls(client, CALLS)
        store_call_counters(client, COUNTED, started=nov(1), exported=nov(25))
    finally:
        client.close()
    catalog, flat = tmp_path / "models.yaml", tmp_path / "flat.yaml"
    catalog.write_text(CATALOG, encoding="utf-8")
    flat.write_text(FLAT_CATALOG, encoding="utf-8")
    yield Store(url, catalog, flat)


def test_a_dry_run_says_what_changes_and_writes_nothing(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    before, rows_before = store.costs(), store.stored_rows()
    document = store.reprice(capsys)
    assert document["applied"] is False and document["run_id"] is None
    assert document["rows"] == EXPECTED_ROWS
    assert document["totals"] == EXPECTED_TOTALS
    assert document["rewritten"] == len(REWRITTEN)
    assert document["left_as_they_are"] == {"answer_cache_hit": 1, "not_billed": 1}
    assert document["cut_to_12_decimals"] == 1
    assert document["counters"] == {"calls": 16, "calls_in_llm_usage": 11, "not_seen": 5}
    assert "usage counters are not changed" in document["note"]
    assert store.costs() == before and store.stored_rows() == rows_before


def test_apply_rewrites_each_changed_call_once_and_a_second_apply_is_a_no_op(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    rows_before = store.stored_rows()
    whole_rows_before = _whole_rows(store)
    applied = store.reprice(capsys, "--apply")
    assert applied["applied"] is True and applied["rows"] == EXPECTED_ROWS
    assert store.costs() == AFTER  # FINAL reads see the newer rows at once
    assert store.stored_rows() == rows_before + len(REWRITTEN)  # re-inserted, not updated in place
    assert _whole_rows(store) == whole_rows_before  # every other column as it was, time to the nanosecond
    [(sub_microsecond,)] = store.query("SELECT uniqExact(toUnixTimestamp64Nano(time)) FROM llm_usage "
                                       "WHERE conversation LIKE 'cached-late%'")  # fmt: skip
    assert sub_microsecond == 1
    logged = store.query("SELECT run_id, range_from, range_to, day, model, currency, virtual, calls, rewritten, "
                         "became_priced, became_unpriced, old_cost, new_cost FROM cost_reprices "
                         "ORDER BY day, model, currency")  # fmt: skip
    run = applied["run_id"]
    first, last = date(2026, 11, 1), date(2026, 11, 30)
    assert logged == [
        (run, first, last, date(2026, 11, 3), "tm-chat", "CNY", False, 1, 1, 0, 0, Decimal("0.006"), Decimal("0.0055")),
        (run, first, last, date(2026, 11, 10), "tm-gone", "", False, 1, 1, 0, 1, Decimal(0), Decimal(0)),
        (run, first, last, date(2026, 11, 10), "tm-gone", "CNY", False, 0, 0, 0, 0, Decimal("0.001"), Decimal(0)),
        (run, first, last, date(2026, 11, 10), "tm-local-1", "CNY", True, 1, 1, 0, 0, Decimal("0.0001"),
         Decimal("0.00009")),
        (run, first, last, date(2026, 11, 10), "tm-usd-1", "USD", False, 1, 1, 1, 0, Decimal(0), Decimal("0.0005")),
        (run, first, last, date(2026, 11, 20), "tm-chat", "CNY", False, 4, 3, 0, 0, Decimal("0.1229"),
         Decimal("0.117")),
    ]  # fmt: skip
    [(catalog,)] = store.query("SELECT any(catalog) FROM cost_reprices")
    assert str(store.catalog) in catalog and "built-in models.yaml" in catalog

    again = store.reprice(capsys, "--apply")
    assert again["rewritten"] == 0
    assert [row["new_cost"] for row in again["rows"]] == [row["old_cost"] for row in again["rows"]]
    assert store.stored_rows() == rows_before + len(REWRITTEN)
    assert store.query("SELECT uniqExact(run_id) FROM cost_reprices") == [(1,)]  # nothing logged the second time


def test_merged_parts_keep_the_newer_rows(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.reprice(capsys, "--apply")
    client = open_store(store.url, create=False)
    try:
        client.command("OPTIMIZE TABLE llm_usage FINAL")
        merged = client.query("SELECT conversation, cost, currency, virtual, unpriced, price_from, price_tier "
                              "FROM llm_usage").result_rows  # without FINAL: what the merge kept  # fmt: skip
    finally:
        client.close()
    assert {str(row[0]): tuple(row[1:]) for row in merged} == AFTER
    assert len(merged) == len(AFTER)


def test_back_and_forth_between_catalogs_is_never_taken_for_a_retried_insert(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same rows with the same cost inserted a second time (v1, flat, v1 again) would be dropped by the table's
    insert deduplication as a retry; each reprice's inserts carry a token of their own."""
    store.reprice(capsys, "--apply")
    flat = store.reprice(capsys, "--apply", catalog=store.flat_catalog)
    assert flat["rewritten"] > 0
    assert store.costs()["cached-early"][:2] == (Decimal("0.006"), "CNY")  # 1000 x 2 + 500 x 8, flat
    store.reprice(capsys, "--apply")
    iso = {"long": (*AFTER["long"][:4], "2026-11-15T00:00:00+00:00", "1")}  # rewritten twice: now in the ISO form
    assert store.costs() == {**AFTER, **iso}


def test_pages_read_every_call_once_in_key_order(store: Store, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    client = open_store(store.url, create=False)
    try:
        pages = list(reprice_queries.calls_of_day(client, date(2026, 11, 20), page_rows=2))
    finally:
        client.close()
    assert [len(page) for page in pages] == [2, 2, 2]
    keys = [(row["user"], row["time"], row["trace_id"], row["span_id"]) for page in pages for row in page]
    assert keys == sorted(keys) and len(set(keys)) == 6
    monkeypatch.setattr(reprice_queries, "PAGE_ROWS", 2)
    document = store.reprice(capsys, "--apply")
    assert document["rows"] == EXPECTED_ROWS
    assert store.costs() == AFTER


def test_model_filter(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    document = store.reprice(capsys, "--model", "TM-LOCAL*", "--apply")
    assert [row["model"] for row in document["rows"]] == ["tm-local-1"]
    assert document["counters"] == {"calls": 1, "calls_in_llm_usage": 1, "not_seen": 0}
    costs = store.costs()
    assert costs["local"] == AFTER["local"]
    assert costs["cached-early"][0] == Decimal("0.006")  # other models untouched


def test_the_table_says_what_reprice_does_not_change(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reprice", "--from", "2026-11-01", "--to", "2026-11-30", "--clickhouse-url", store.url,
                 "--models", str(store.catalog)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert "dry run" in out and "2026-11-15, tier 0" in out and "since always" in out
    assert "-0.0059" in out and "+0.0005" in out and "CNY virtual" in out and "unpriced" in out
    assert "Left as they are: 1 answer-cache hits" in out and "1 calls nothing was billed for" in out
    assert "5 of the 16 calls the usage counters hold in the range have no row in llm_usage" in out
    assert "The usage counters are not changed" in out
    assert "7 calls would be rewritten; add --apply to write" in out
    assert "2026-11-20 (day 4 of 4): 6 calls read, 3 to rewrite" in captured.err  # progress on stderr


def test_bad_input_and_a_store_without_the_log_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reprice", "--from", "2026-11-31"]) == 2
    assert "--from: '2026-11-31' is not a day" in capsys.readouterr().err
    assert main(["reprice", "--from", "2026-11-02", "--to", "2026-11-01"]) == 2
    assert "--to (2026-11-01) is before --from (2026-11-02)" in capsys.readouterr().err
    url = f"chdb://{tmp_path / 'chdb'}"
    client = open_store(url)
    try:
        migrate(client, RenderOptions(), migrations=[m for m in load_migrations() if m.version <= 20])
    finally:
        client.close()
    assert main(["reprice", "--from", "2026-11-01", "--clickhouse-url", url, "--format", "json"]) == 0  # a dry run
    capsys.readouterr()
    assert main(["reprice", "--from", "2026-11-01", "--clickhouse-url", url, "--apply"]) == 1
    assert "no cost_reprices table (migration 0022); run `tokenmeter db migrate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-15T00:00:00+00:00", datetime(2026, 11, 15, tzinfo=UTC)),
        ("2026-11-15", datetime(2026, 11, 15, tzinfo=UTC)),
        ("2026-11-15T08:00:00+08:00", datetime(2026, 11, 15, tzinfo=UTC)),
        ("2026-11-15T00:00:00Z", datetime(2026, 11, 15, tzinfo=UTC)),
        ("", None),
        ("not a date", None),
    ],
)
def test_price_from_is_read_back_tolerantly(text: str, expected: datetime | None) -> None:
    assert parse_price_from(text) == expected


def test_a_row_is_priced_as_its_call_was_billed(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    catalog = ModelCatalog.load(path)
    row = {"time": SUB_MICROSECOND, "request_model": "tm-premium", "effective_model": "tm-chat",
           "response_model": "tm-chat-0920", "quota_decision": "downgrade", "input_tokens": 1000, "output_tokens": 10,
           "cache_read_input_tokens": 5000, "reasoning_output_tokens": 0, "cost": None, "unpriced": True}  # fmt: skip
    repriced = reprice(row, catalog)
    assert repriced.model == "tm-chat"  # the model sent, not the one asked for
    assert repriced.new.amount == Decimal("0.00029")  # cache reads beyond the input cut to it: 1000 x 0.25 + 10 x 4
    assert stored_cost(row).priced is False and repriced.changed


def _whole_rows(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every column but the cost's, per call, time in nanoseconds."""
    kept = ", ".join(name for name in _columns(store) if name not in reprice_queries.COST_COLUMNS and name != "time")
    rows = store.query(f"SELECT conversation, toUnixTimestamp64Nano(time), {kept} FROM llm_usage FINAL")
    return {str(row[0]): row[1:] for row in rows}


def _columns(store: Store) -> list[str]:
    rows = store.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'llm_usage' "
                       "ORDER BY position")  # fmt: skip
    return [str(name) for (name,) in rows]


def test_a_batch_call_is_repriced_at_the_batch_rate_as_it_was_billed(tmp_path: Path, migrated_store: Any) -> None:
    """A Batch API call's row keeps its batch id (migration 0023): reprice prices it at the price's batch rate."""
    path = tmp_path / "models.yaml"
    price = '{input: "2.00", output: "8.00", per: 1M, currency: CNY, batch: "0.5"}'
    path.write_text(f"- match: tm-batch*\n  price: {price}\n", encoding="utf-8")
    catalog = ModelCatalog.load(path)
    batch_call = call("batched", "tm-batch", 1000, 100, "0.0014", **{semconv.TM_BATCH_ID: "batch_abc"})
    store_calls(
        migrated_store, [(nov(20, 9), batch_call), (nov(20, 10), call("direct", "tm-batch", 1000, 100, "0.0028"))]
    )
    (rows,) = reprice_queries.calls_of_day(migrated_store, date(2026, 11, 20))
    by_name = {row["conversation"]: row for row in rows}
    assert (by_name["batched"]["batch_id"], by_name["direct"]["batch_id"]) == ("batch_abc", "")
    batched, direct = reprice(by_name["batched"], catalog), reprice(by_name["direct"], catalog)
    assert (batched.new.amount, direct.new.amount) == (Decimal("0.0014"), Decimal("0.0028"))  # half: 1000 x 2 + 100 x 8
    assert not batched.changed and not direct.changed
