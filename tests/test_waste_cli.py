"""`tokenmeter report --waste` through the real entry point, from a chDB store holding tests/support/waste_calls.py's
November: the table, JSON and CSV, the routing replay of a policy file at the built-in catalog's prices, bad input."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from waste_calls import H1, HOSTILE_USER, POLICY_ROUTING, store_waste_calls

from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chDB directory with November's calls; closed."""
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    directory = tmp_path_factory.mktemp("waste-cli") / "chdb"
    client = open_store(f"chdb://{directory}")
    try:
        migrate(client, RenderOptions())
        store_waste_calls(client)
    finally:
        client.close()
    return directory


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("waste-policy") / "policy.yaml"
    path.write_text("budgets: []\n" + POLICY_ROUTING, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_policy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENMETER_POLICY", raising=False)
    monkeypatch.delenv("TOKENMETER_MODELS", raising=False)
    get_settings.cache_clear()


def _waste(capsys: pytest.CaptureFixture[str], store_dir: Path, *options: str) -> tuple[int, str, str]:
    code = main(["report", "--waste", "--period", "2026-11", "--clickhouse-url", f"chdb://{store_dir}", *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table(store_dir: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _waste(capsys, store_dir, "--policy", str(policy_file))
    assert code == 0, err
    assert err == f"tokenmeter report: answered by the store chdb://{store_dir}\n"
    lines = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    assert f"Waste, 2026-11 (UTC) — chdb://{store_dir}" in lines
    assert f"{H1} kb qwen-7b 5 2 5,000 / 500 2.50 CNY" in lines
    assert "heavy sales 5 4,000 1,038 3.9x" in lines
    assert "kb /chat/kb_chat 7 91% 11,000" in lines
    assert "kb carol 2 1 3,000 / 200 1.00 USD" in lines
    assert f"kb {HOSTILE_USER} 1 1,000 / 100 0.5 CNY" in lines
    assert "all 14 6 43% 5,800 / 580 2.50 CNY 27" in lines  # the cache replay's totals
    assert "The answer cache answered 2 calls, saving 2,000 / 200 tokens and 1.00 CNY." in lines
    # at the built-in catalog's prices now: deepseek-chat 1 / 2 CNY per 1M, qwen-7b 1 / 2 virtual CNY per 1M
    assert "short-lookup tier small 2 2 0.0068 CNY 0.0068 CNY (virtual) 0.0068 CNY" in lines
    assert any("budget_left is unknown for stored calls" in line for line in lines)


def test_json_is_the_document(store_dir: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _waste(capsys, store_dir, "--policy", str(policy_file), "--format", "json", "--top", "2")
    assert code == 0, err
    document = json.loads(out)
    assert document["settings"] == {"cache_ttl": "3600", "retry_window": "120", "top": "2", "heavy_factor": "3.0",
                                    "heavy_min_calls": "5"}  # fmt: skip
    assert [row["prompt_hash"] for row in document["repeated_prompts"]] == [H1, "H2"]
    assert document["retries_total"]["calls"] == 3
    routing = document["routing"]
    assert routing["policy"] == str(policy_file)
    assert [(rule["rule"], rule["matched"], rule["moved"]) for rule in routing["rules"]] == [
        ("short-lookup", 2, 2), ("brownout", 0, 0), ("legal-stay", 1, 0), ("long", 0, 0)]  # fmt: skip
    saved = {(m["currency"], m["virtual"]): Decimal(m["amount"]) for m in routing["saved"]}
    assert saved == {("CNY", False): Decimal("0.0068"), ("CNY", True): Decimal("-0.0068")}
    assert "intent only when the app classified" in routing["notes"][0]


def test_csv(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _waste(capsys, store_dir, "--format", "csv", "--cache-ttl", "7200", "--retry-window", "119")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    first = rows[0]
    assert (first["finding"], first["prompt_hash"], first["calls"], first["amount"], first["currency"]) == (
        "repeated_prompt", H1, "5", "2.5", "CNY")  # fmt: skip
    retries = [(row["user"], row["calls"]) for row in rows if row["finding"] == "retry"]
    assert retries == [("alice", "1"), ("dave", "1")]  # the hostile id's retry came at 120 s
    cache = {row["model"]: row["calls"] for row in rows if row["finding"] == "cache_replay"}
    assert cache == {"qwen-7b": "6", "mystery-model": "2", "deepseek-chat": "0", "": "8"}
    assert not [row for row in rows if row["finding"] == "routing_replay"]  # no policy given


def test_without_a_policy_the_table_says_how_to_give_one(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = _waste(capsys, store_dir)
    assert code == 0
    assert "Routing replay: no policy to replay: give --policy FILE (or TOKENMETER_POLICY)" in out


def test_an_empty_period(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = main(["report", "--waste", "--period", "2026-09", "--clickhouse-url", f"chdb://{store_dir}"]), *(
        capsys.readouterr())  # fmt: skip
    assert code == 0, err
    assert "Repeated prompts (by prompt hash; calls x cost): no prompt hash seen twice" in out
    assert "Cache replay (by prompt hash and model, TTL 3600 s): saved: no calls" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--cache-ttl", "0"), "--cache-ttl: '0' is not a whole number of seconds from 1 up"),
        (("--retry-window", "soon"), "--retry-window: 'soon' is not a whole number of seconds"),
        (("--heavy-factor", "1"), "--heavy-factor: '1' is not a number above 1"),
        (("--period", "November"), "--period: 'November' is not a period"),
        (("--timezone", "Mars/Olympus"), "--timezone: 'Mars/Olympus' is not a time zone"),
        (("--at", "2026-11-03"), "--at and --subject are the usage report's; --waste takes --period"),
        (("--policy", "/nonexistent/policy.yaml"), "policy: "),
    ],
)
def test_bad_input_exits_2(store_dir: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...],
                           message: str) -> None:  # fmt: skip
    code, out, err = _waste(capsys, store_dir, *options)
    assert (code, out) == (2, "")
    assert err.startswith(f"tokenmeter report: {message}"), err


def test_waste_options_need_waste(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--cache-ttl", "60", "--clickhouse-url", f"chdb://{store_dir}"]) == 2
    assert capsys.readouterr().err == "tokenmeter report: --cache-ttl is the waste report's: add --waste\n"
    assert main(["report", "--period", "2026-11", "--clickhouse-url", f"chdb://{store_dir}"]) == 2
    assert "'2026-11' is not one of day, week, month, year (other periods: with --waste)" in capsys.readouterr().err
