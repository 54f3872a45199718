"""`tokenmeter reconcile` on a constructed DeepSeek export against calls written into a chDB store through the OTLP
ingest path: the report finds exactly the differences built in (a day only tokenmeter saw, a model only the
provider billed, output tokens off by 50, cost off by 0.0010 CNY, 100 cached tokens more) and nothing else;
importing again changes nothing; a corrected export replaces its values; a malformed file imports nothing.
An OpenAI export with dated snapshot names matches tokenmeter's, and the threshold is exact at its boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from reconcile_calls import AMOUNT, CACHE_READ, COST, DEEPSEEK_CALLS, at, call
from waste_calls import WasteCall, store_waste_calls

from tokenmeter import semconv
from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings


@pytest.fixture(autouse=True)
def builtin_catalog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TOKENMETER_MODELS", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A chDB directory holding DEEPSEEK_CALLS; closed."""
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    directory = tmp_path / "chdb"
    client = open_store(f"chdb://{directory}")
    try:
        migrate(client, RenderOptions())
        store_waste_calls(client, DEEPSEEK_CALLS)
    finally:
        client.close()
    return directory


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, Path]:
    (amount := tmp_path / "amount-2026-11.csv").write_text(AMOUNT, encoding="utf-8")
    (cost := tmp_path / "cost-2026-11.csv").write_text(COST, encoding="utf-8")
    return amount, cost


def reconcile(store: Path, capsys: pytest.CaptureFixture[str], *arguments: str | Path) -> tuple[int, Any, str]:
    code = main(
        [
            "reconcile",
            "--provider",
            "deepseek",
            *map(str, arguments),
            "--format",
            "json",
            "--clickhouse-url",
            f"chdb://{store}",
        ]
    )
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else None, err


def held(store: Path) -> list[tuple[Any, ...]]:
    """Every row of provider_usage (not folded: a rewrite would show)."""
    from tokenmeter.store import open_store

    client = open_store(f"chdb://{store}", create=False)
    try:
        return client.query(
            "SELECT day, model, api_key, token_type, quantity, imported_at FROM provider_usage ORDER BY ALL"
        ).result_rows
    finally:
        client.close()


def test_the_report_finds_exactly_the_differences_built_in(
    store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, err = reconcile(store, capsys, *export)
    assert code == 3, err
    assert err == (
        "tokenmeter reconcile: 5 month total(s) differ by more than 0.5 %: 2026-11 requests, "
        "2026-11 input, 2026-11 cached_input, 2026-11 output, 2026-11 cost\n"
    )
    assert report["period"] == {"from": "2026-11-01", "to": "2026-11-30", "zone": "UTC"}
    assert (report["currency"], report["compared"]) == ("CNY", ["requests", "input", "cached_input", "output", "cost"])
    assert report["not_compared"] == ["reasoning"]  # DeepSeek's export bills it as output
    assert report["differences"] == [
        {
            "day": "2026-11-04",
            "model": "deepseek-chat",
            "type": "cached_input",
            "tokenmeter": "1500",
            "provider": "1400",
            "difference": "100",
        },
        {
            "day": "2026-11-04",
            "model": "deepseek-chat",
            "type": "output",
            "tokenmeter": "400",
            "provider": "450",
            "difference": "-50",
        },
        {
            "day": "2026-11-04",
            "model": "deepseek-chat",
            "type": "cost",
            "tokenmeter": "0.01",
            "provider": "0.011",
            "difference": "-0.001",
        },
    ]
    assert report["provider_only"] == [
        {
            "day": "2026-11-06",
            "model": "deepseek-coder",
            "models": ["deepseek-coder"],
            "values": {"requests": "3", "input": "100", "output": "10", "cost": "0.0002"},
            "split": [
                {"workspace": "u-1", "api_key": "", "values": {"cost": "0.0002"}},
                {"workspace": "u-1", "api_key": "kb", "values": {"requests": "3", "input": "100", "output": "10"}},
            ],
        },
    ]
    assert report["tokenmeter_only"] == [
        {
            "day": "2026-11-05",
            "model": "deepseek-chat",
            "models": ["deepseek-chat"],
            "unpriced_calls": 0,
            "values": {"requests": "1", "input": "300", "cached_input": "0", "output": "30", "cost": "0.0009"},
        },
    ]
    totals = {month["type"]: (month["tokenmeter"], month["provider"], month["relative"]) for month in report["months"]}
    assert totals == {
        "requests": ("5", "7", "-0.285714"),
        "input": ("4600", "4400", "0.045455"),
        "cached_input": ("2100", "2000", "0.05"),
        "output": ("1930", "1960", "-0.015306"),
        "cost": ("0.0527", "0.053", "-0.00566"),
    }
    assert report["past_threshold"] is True
    assert report["notes"] == [f"imported {export[0]}, {export[1]}: 21 values written, 0 already held"]


def test_importing_the_same_export_again_changes_nothing(
    store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _code, first, _err = reconcile(store, capsys, *export)
    rows = held(store)
    code, again, err = reconcile(store, capsys, *export)
    assert code == 3, err
    assert held(store) == rows and len(rows) == 21
    assert again["notes"] == [f"imported {export[0]}, {export[1]}: 0 values written, 21 already held"]
    assert {**again, "notes": []} == {**first, "notes": []}
    # Nothing to import: the held export is compared again.
    code, held_only, err = reconcile(store, capsys, "--month", "2026-11")
    assert code == 3 and {**held_only, "notes": []} == {**first, "notes": []}, err


def test_a_corrected_export_replaces_its_values(
    store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    reconcile(store, capsys, *export)
    export[0].write_text(AMOUNT.replace("output_tokens,3,450", "output_tokens,3,400"), encoding="utf-8")
    code, report, err = reconcile(store, capsys, *export)
    assert code == 3, err
    assert report["notes"] == [f"imported {export[0]}, {export[1]}: 1 values written, 20 already held"]
    assert [(d["day"], d["type"]) for d in report["differences"]] == [
        ("2026-11-04", "cached_input"),
        ("2026-11-04", "cost"),
    ]


def test_a_malformed_file_imports_nothing(
    store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    export[1].write_text(COST.replace("0.0110", "0.011O"), encoding="utf-8")
    code, report, err = reconcile(store, capsys, *export)
    assert (code, report) == (2, None)
    assert err == f"tokenmeter reconcile: {export[1]}, line 4, column 'cost': '0.011O' is not a number\n"
    assert held(store) == []  # the good amount file was not written either


def test_days_that_agree_pass_the_threshold(
    store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report, err = reconcile(store, capsys, *export, "--from", "2026-11-03", "--to", "2026-11-03")
    assert (code, err) == (0, "")
    assert (report["differences"], report["provider_only"], report["tokenmeter_only"]) == ([], [], [])
    assert all(not month["past_threshold"] and month["relative"] == "0" for month in report["months"])


def test_the_table(store: Path, export: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reconcile", "--provider", "deepseek", *map(str, export), "--clickhouse-url", f"chdb://{store}"])
    out, _err = capsys.readouterr()
    assert code == 3
    lines = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    assert "deepseek: tokenmeter against the provider's export, 2026-11-01 .. 2026-11-30 (UTC); cost in CNY" in lines
    assert "2026-11-04 deepseek-chat output 400 450 -50 (invoice more)" in lines
    assert "2026-11-04 deepseek-chat cached_input 1500 1400 100 (tokenmeter more)" in lines
    assert "2026-11-06 deepseek-coder deepseek-coder requests 3, input 100, output 10, cost 0.0002" in lines
    assert (
        "2026-11-05 deepseek-chat deepseek-chat requests 1, input 300, cached_input 0, output 30, cost 0.0009" in lines
    )
    assert "2026-11 cost 0.0527 0.053 -0.0003 -0.566 % PAST" in lines
    assert "Not in the export, not compared: reasoning" in lines


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--month", "2026-13"], "--month: '2026-13' is not a month; use YYYY-MM, e.g. 2026-11"),
        (["--from", "2026-11-03"], "--from: --from and --to go together"),
        (["--threshold", "-1"], "--threshold: '-1' is not a percentage (a number from 0, e.g. 0.5)"),
        (["--model-alias", "x"], "--model-alias: 'x' is not EXPORT_NAME=TOKENMETER_NAME"),
        ([], "--month: nothing imported to take the period from; give --month YYYY-MM or --from/--to"),
    ],
)
def test_bad_options(store: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str) -> None:
    code, _report, err = reconcile(store, capsys, *arguments)
    assert code == 2 and err.startswith(f"tokenmeter reconcile: {message}"), err


def test_a_store_without_the_migration_says_how_to_get_it(tmp_path: Path, export: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, load_migrations, migrate

    client = open_store(f"chdb://{tmp_path / 'old'}")
    try:
        migrate(client, RenderOptions(), [m for m in load_migrations() if m.version < 21])
    finally:
        client.close()
    code, report, err = reconcile(tmp_path / "old", capsys, *export)
    assert (code, report) == (1, None)
    assert err == (f"tokenmeter reconcile: chdb://{tmp_path / 'old'} could not reconcile: it has no provider_usage "
                   "table; run `tokenmeter db migrate --clickhouse-url URL`\n")  # fmt: skip


def _openai_export(directory: Path) -> list[Path]:
    """November 3: gpt-4o (the export's name) 2 requests, 2,000 / 400 cached / 500 tokens, 1.00 USD in two lines
    (the amounts as the API writes them: a bare number and a string)."""
    start = 1793664000  # 2026-11-03T00:00:00Z
    usage = {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": start,
                "end_time": start + 86400,
                "results": [
                    {
                        "object": "organization.usage.completions.result",
                        "model": "gpt-4o",
                        "num_model_requests": 2,
                        "input_tokens": 2000,
                        "input_cached_tokens": 400,
                        "output_tokens": 500,
                        "input_audio_tokens": 0,
                        "output_audio_tokens": 0,
                        "project_id": "proj_kb",
                        "api_key_id": None,
                        "user_id": None,
                        "batch": None,
                    }
                ],
            }
        ],
    }
    costs = (
        (
            '{"object": "page", "data": [{"object": "bucket", "start_time": START, "end_time": END, "results": ['
            '{"object": "organization.costs.result", "amount": {"value": 0.40, "currency": "usd"}, '
            '"line_item": "gpt-4o-2024-08-06, input", "project_id": "proj_kb"}, '
            '{"object": "organization.costs.result", "amount": {"value": "0.60", "currency": "usd"}, '
            '"line_item": "gpt-4o-2024-08-06, output", "project_id": "proj_kb"}]}]}'
        )
        .replace("START", str(start))
        .replace("END", str(start + 86400))
    )
    (usage_file := directory / "usage.json").write_text(json.dumps(usage), encoding="utf-8")
    (costs_file := directory / "costs.json").write_text(costs, encoding="utf-8")
    return [usage_file, costs_file]


def test_openai_snapshots_and_the_threshold_boundary(migrated_store: Any, tmp_path: Path) -> None:
    """Through the Python API: tokenmeter's dated snapshot and the export's alias meet under one key; a model the
    catalog gives OpenAI that the export does not bill is tokenmeter's only; 0.6 % off passes a 0.6 % threshold,
    not a 0.59 % one; unpriced calls and costs in another currency are named, not added."""
    from tokenmeter.store.reconcile_queries import reconcile as reconcile_export

    snapshot = {semconv.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06"}
    store_waste_calls(migrated_store, [
        call("alice", "gpt-4o", at(3), (1200, 300), "0.6", "USD", **snapshot, **{CACHE_READ: 400}),
        call("bob", "gpt-4o", at(3, 11), (800, 200), "0.405", "USD", **snapshot),
        call("carol", "gpt-4o-mini", at(3, 12), (100, 10), "0.001", "USD"),
        call("carol", "gpt-4o-mini", at(20), (100, 10), "0.5", "CNY"),  # priced in another currency
        WasteCall("carol", 0, "gpt-4o-mini", input_tokens=5, output_tokens=5, cost=None, moment=at(20, 11)),
    ])  # fmt: skip
    result = reconcile_export(migrated_store, "openai", _openai_export(tmp_path), threshold=Decimal("0.6"))
    assert [row.model_key for row in result.of_kind("both")] == ["gpt-4o"]
    assert [(d.token_type, d.tokenmeter, d.provider) for row in result.differing for d in row.differences] == [
        ("cost", Decimal("1.005"), Decimal("1.00"))]  # fmt: skip
    assert result.rows[0].tokenmeter and result.rows[0].tokenmeter.models == {"gpt-4o-2024-08-06"}
    alone = [(row.day.day, row.model_key, row.tokenmeter.values["requests"] if row.tokenmeter else None)
             for row in result.of_kind("tokenmeter only")]  # fmt: skip
    assert alone == [(3, "gpt-4o-mini", 1), (20, "gpt-4o-mini", 2)]
    cost = next(total for total in result.totals if total.token_type == "cost")
    assert (cost.tokenmeter, cost.provider, cost.relative, cost.past_threshold) == (
        Decimal("1.006"), Decimal("1.00"), Decimal("0.006"), False)  # fmt: skip
    assert result.notes[:2] == [
        "tokenmeter has 1 unpriced calls of these models: their cost is unknown, not counted",
        "tokenmeter priced some calls in another currency than USD's: 0.5 CNY (not in the cost compared)"]  # fmt: skip
    held_again = reconcile_export(migrated_store, "openai", month="2026-11", threshold=Decimal("0.59"))
    assert next(total for total in held_again.totals if total.token_type == "cost").past_threshold
    assert result.rows[0].provider and result.rows[0].provider.split == {("proj_kb", ""): {
        "requests": Decimal(2), "input": Decimal(2000), "cached_input": Decimal(400), "output": Decimal(500),
        "audio_input": Decimal(0), "audio_output": Decimal(0), "cost": Decimal("1.00")}}  # fmt: skip
