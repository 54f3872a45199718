"""``GET /v1/waste`` on a real `tokenmeter serve` holding tests/support/waste_calls.py's November, with a policy that
has a routing section: the bearer token, the document (equal to the store's own report), a routing section sent
by the command line, bad parameters; and `tokenmeter report --waste` asking the serve that holds the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import ServeProcess
from waste_calls import H1, POLICY_ROUTING, store_waste_calls

from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings

# The routing section the command line sends for `--policy`: only a rule on the large model's calls.
OTHER_ROUTING = {"tiers": [{"name": "small", "model": "qwen-7b"}, {"name": "large", "model": "deepseek-chat"}],
                 "rules": [{"name": "all-down", "when": {"models": ["deepseek-*"]}, "down": 1}]}  # fmt: skip


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A chDB directory with November's calls (closed), and the report the store itself gives with the policy."""
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.enforcer.policy import load_policy
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate
    from tokenmeter.store.waste_queries import read_waste
    from tokenmeter.waste.routing_replay import ReplayPolicy
    from tokenmeter.waste.waste_query import WasteQuery

    base = tmp_path_factory.mktemp("waste-route")
    (base / "policy.yaml").write_text("budgets: []\n" + POLICY_ROUTING, encoding="utf-8")
    routing = load_policy(base / "policy.yaml").routing
    assert routing is not None
    client = open_store(f"chdb://{base / 'serve' / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        store_waste_calls(client)
        policy = ReplayPolicy(routing, "the policy serve enforces", ModelCatalog.load(None).price_for)
        document = read_waste(client, WasteQuery.parse(period="2026-11"), policy).to_dict()
    finally:
        client.close()
    return base, document


@pytest.fixture(scope="module")
def serve(expected: tuple[Path, dict[str, Any]]) -> Iterator[ServeProcess]:
    base = expected[0]
    env = {"TOKENMETER_POLICY": str(base / "policy.yaml")}  # the built-in catalog (no TOKENMETER_MODELS)
    process = ServeProcess(base / "serve", env=env).start()
    try:
        yield process
    finally:
        process.stop()


def _get(serve: ServeProcess, token: str | None = "", **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {serve.api_token if token == '' else token}"} if token is not None else {}
    return httpx.get(f"{serve.api}/v1/waste", params=params, headers=headers, timeout=60)


def test_behind_the_api_token(serve: ServeProcess) -> None:
    assert _get(serve, token=None, period="2026-11").status_code == 401
    assert _get(serve, token="wrong", period="2026-11").status_code == 401


def test_the_document_is_the_stores_with_the_enforced_policy(
    serve: ServeProcess, expected: tuple[Path, dict[str, Any]]
) -> None:
    answer = _get(serve, period="2026-11")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {**expected[1], "store": serve.url}
    assert answer.json()["routing"]["policy"] == "the policy serve enforces"


def test_a_routing_section_sent_is_replayed_instead(serve: ServeProcess) -> None:
    answer = _get(serve, period="2026-11", routing=json.dumps(OTHER_ROUTING), policy="other.yaml")
    assert answer.status_code == 200, answer.text
    routing = answer.json()["routing"]
    assert routing["policy"] == "other.yaml"
    # carol's two calls and zed's (in an experiment: not replayed)
    assert [(rule["rule"], rule["matched"], rule["moved"]) for rule in routing["rules"]] == [("all-down", 2, 2)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"period": "2026-11", "colour": "red"}, "unknown parameter 'colour'"),
        ({"period": "someday"}, "period: 'someday' is not a period"),
        ({"cache_ttl": "-5"}, "cache_ttl: '-5' is not a whole number of seconds"),
        ({"routing": "{not json"}, "routing: not a policy's routing section"),
        ({"routing": json.dumps({"tiers": []})}, "routing: not a policy's routing section"),
    ],
)
def test_bad_parameters_are_400(serve: ServeProcess, params: dict[str, str], message: str) -> None:
    answer = _get(serve, **params)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(message), answer.json()


def test_the_cli_asks_the_serve_holding_the_store(serve: ServeProcess, expected: tuple[Path, dict[str, Any]],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("XDG_DATA_HOME", str(serve.data_dir / "xdg"))
    monkeypatch.delenv("TOKENMETER_API_TOKEN", raising=False)
    monkeypatch.delenv("TOKENMETER_POLICY", raising=False)
    other = expected[0] / "other.yaml"
    other.write_text("budgets: []\nrouting: " + json.dumps(OTHER_ROUTING) + "\n", encoding="utf-8")
    get_settings.cache_clear()
    try:
        code = main(["report", "--waste", "--period", "2026-11", "--format", "json", "--clickhouse-url", serve.url])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert f"answered by the serve API at {serve.api} (store {serve.url})" in err
        assert json.loads(out) == expected[1]  # serve replays the policy it enforces
        code = main(["report", "--waste", "--period", "2026-11", "--format", "json", "--clickhouse-url", serve.url,
                     "--policy", str(other)])  # fmt: skip
        out, err = capsys.readouterr()
    finally:
        get_settings.cache_clear()
    assert code == 0, err
    document = json.loads(out)
    assert document["routing"]["policy"] == str(other)
    assert [rule["rule"] for rule in document["routing"]["rules"]] == ["all-down"]
    assert document["repeated_prompts"][0]["prompt_hash"] == H1
