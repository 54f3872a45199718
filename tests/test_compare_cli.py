"""`tokenmeter compare` through the real entry point: from a chDB store, then from the `tokenmeter serve` holding it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import ServeProcess
from test_rating_queries import Call, day, rating_request, store_calls, store_ratings

from tokenmeter import semconv
from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings

QWEN_SCORES = [82, 78, 85, 80, 84, 79, 81, 83, 80, 82, 86, 78]  # mean 81.5, s^2 7.0
BAICHUAN_SCORES = [80, 79, 83, 78, 82, 80, 81, 79, 84, 77, 82, 80]  # mean 80.417, s^2 4.265
# qwen-7b has one more answer, unrated (the app mostly runs it: the pair goes from it). Welch: d = -1.083,
# df = 20.78, interval -3.10 .. +0.93: inside +-5. Cost per answer 0.0135 and 0.009 CNY: 13 x 0.0045 = 0.0585 less.
SENTENCE = (
    "moving kb-assistant from qwen-7b to baichuan2-7b would have cost 0.0585 CNY less in 2026-11 (real prices); "
    "rating difference -1.1 (95 % CI -3.1 .. +0.9): baichuan2-7b is cheaper at similar quality"
)


def _november(client: Any) -> None:
    calls, ratings = [], []
    for number, (qwen, baichuan) in enumerate(zip(QWEN_SCORES, BAICHUAN_SCORES, strict=True), start=1):
        calls += [Call("qwen-7b", day(number), 900, 300, "0.0135", message_id=f"q-{number}"),
                  Call("baichuan2-7b", day(number), 600, 200, "0.009", message_id=f"b-{number}")]  # fmt: skip
        ratings += [rating_request(qwen, day(number, 14), message_id=f"q-{number}"),
                    rating_request(baichuan, day(number, 14), message_id=f"b-{number}")]  # fmt: skip
    calls.append(Call("qwen-7b", day(13), 900, 300, "0.0135", message_id="q-unrated"))
    arms = [(semconv.ARM_CONTROL, "qwen-7b", "0.02"), (semconv.ARM_CONTROL, "qwen-7b", "0.02"),
            (semconv.ARM_CANDIDATE, "baichuan2-7b", "0.01")]  # fmt: skip
    calls += [Call(model, day(20), cost=cost, app="hr-bot", message_id=f"x-{n}", experiment="cheap-hr", arm=arm)
              for n, (arm, model, cost) in enumerate(arms)]  # fmt: skip
    ratings.append(rating_request(60, day(21), message_id="x-0"))
    store_calls(client, calls)
    store_ratings(client, *ratings)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chDB directory with November's calls and ratings; closed."""
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    directory = tmp_path_factory.mktemp("compare") / "serve" / "chdb"
    client = open_store(f"chdb://{directory}")
    try:
        migrate(client, RenderOptions())
        _november(client)
    finally:
        client.close()
    return directory


def _compare(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    code = main(["compare", *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_and_its_sentence_from_the_store(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _compare(capsys, "--period", "2026-11", "--app", "kb-assistant",
                              "--clickhouse-url", f"chdb://{store_dir}")  # fmt: skip

    assert code == 0, err
    assert f"answered by the store chdb://{store_dir}" in err
    assert f"- {SENTENCE}" in out
    assert "81.5 (79.8 .. 83.2)" in out  # t(0.975, 11) = 2.201 x sqrt(7 / 12) = 1.68
    assert "0.0135 CNY" in out and "1,200 / 400" not in out and "900 / 300" in out


def test_json_and_csv(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _compare(capsys, "--period", "2026-11", "--models", "qwen-7b,baichuan2-7b", "--format", "json",
                              "--clickhouse-url", f"chdb://{store_dir}")  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert [(r["app"], r["model"], r["answers"], r["rated_answers"]) for r in document["rows"]] == [
        ("hr-bot", "qwen-7b", 2, 1), ("hr-bot", "baichuan2-7b", 1, 0),
        ("kb-assistant", "qwen-7b", 13, 12), ("kb-assistant", "baichuan2-7b", 12, 12),
    ]  # fmt: skip
    kb = next(f for f in document["findings"] if f["app"] == "kb-assistant")
    assert (kb["sentence"], kb["quality"], kb["cost"]) == (SENTENCE, "similar", "cheaper")
    assert kb["saving"] == {"currency": "CNY", "virtual": False, "amount": "0.0585"}

    code, out, _ = _compare(capsys, "--period", "2026-11", "--format", "csv", "--clickhouse-url", f"chdb://{store_dir}")
    lines = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(lines) == 4
    assert {(line["model"], line["cost_per_answer"]) for line in lines if line["app"] == "kb-assistant"} == {
        ("qwen-7b", "0.0135"), ("baichuan2-7b", "0.009")
    }  # fmt: skip


def test_an_experiments_arms_side_by_side(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _compare(capsys, "--period", "2026-11", "--experiment", "cheap-hr", "--format", "json",
                              "--clickhouse-url", f"chdb://{store_dir}")  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert [(r["arm"], r["model"], r["answers"]) for r in document["rows"]] == [
        ("control", "qwen-7b", 2), ("candidate", "baichuan2-7b", 1)
    ]  # fmt: skip
    [finding] = document["findings"]
    assert finding["sentence"] == (
        "experiment cheap-hr: moving hr-bot from qwen-7b (control) to baichuan2-7b (candidate) would have cost "
        "0.02 CNY less in 2026-11 (real prices); too few ratings to tell (qwen-7b (control) 1, "
        "baichuan2-7b (candidate) 0; at least 10 each)"
    )


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--period", "2026-13"), "period: '2026-13' is not a period; use a month 2026-11"),
        (("--min-ratings", "1"), "--min-ratings: 1 is not a whole number of at least 2"),
        (("--margin", "0"), "--margin: 0.0 is not a positive number"),
        (("--timezone", "Mars/Base"), "timezone: 'Mars/Base' is not a time zone"),
    ],
)
def test_bad_options_exit_2_naming_them(store_dir: Path, capsys: pytest.CaptureFixture[str],
                                        options: tuple[str, ...], said: str) -> None:  # fmt: skip
    code, _, err = _compare(capsys, *options, "--clickhouse-url", f"chdb://{store_dir}")
    assert (code, said in err) == (2, True), err


def test_a_store_that_is_not_there_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _compare(capsys, "--clickhouse-url", f"chdb://{tmp_path / 'nothing'}")
    assert code == 2
    assert str(tmp_path / "nothing") in err
    assert not (tmp_path / "nothing").exists()  # never made here


@pytest.fixture(scope="module")
def serve(store_dir: Path) -> Iterator[ServeProcess]:
    """A real `tokenmeter serve` holding the store (last: from here on it holds the directory)."""
    process = ServeProcess(store_dir.parent).start()
    try:
        yield process
    finally:
        process.stop()


def test_the_cli_asks_the_serve_holding_the_store(serve: ServeProcess, store_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        code, out, err = _compare(capsys, "--period", "2026-11", "--format", "json", "--clickhouse-url", serve.url)
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    assert f"answered by the serve API at {serve.api} (store chdb://{store_dir})" in err
    document = json.loads(out)
    kb = next(f for f in document["findings"] if f["app"] == "kb-assistant")
    assert kb["sentence"] == SENTENCE

    # serve's own answer is that document, with the store that answered
    answer = httpx.get(f"{serve.api}/v1/compare", params={"period": "2026-11"},
                       headers={"authorization": f"Bearer {serve.api_token}"}, timeout=30)  # fmt: skip
    assert answer.json() == {**document, "store": f"chdb://{store_dir}"}
