"""`tokenmeter credits` through the real command line against a real `tokenmeter serve`: people by identity
headers (this test runs on loopback, a trusted peer) or by JWT; refusals exit 2 with serve's reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from serve_process import ServeProcess

from tokenmeter.cli.main import main
from tokenmeter.settings import get_settings
from tokenmeter.store.credit_ledger import wallet_entries

TOKEN = "credits-cli-token"
SECRET = "credits-cli-jwt-secret-of-32-bytes-or-more"
POLICY = """\
version: 1
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10}
    approvals:
      approvers: ["dept-heads-{subject}"]
      second_level_above: 50000
      second_level_approvers: [finance]
budgets: []
"""
FIONA = jwt.encode({"sub": "fiona", "groups": ["finance"]}, SECRET, algorithm="HS256")


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    process = ServeProcess(tmp_path, ["--policy", str(policy)],
                           {"TOKENMETER_API_TOKEN": TOKEN, "TOKENMETER_JWT_SECRET": SECRET}).start()  # fmt: skip
    monkeypatch.setenv("TOKENMETER_API_TOKEN", TOKEN)
    monkeypatch.delenv("TOKENMETER_JWT", raising=False)
    get_settings.cache_clear()
    try:
        yield process
    finally:
        process.stop()
        get_settings.cache_clear()


def _run(serve: ServeProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["credits", *argv[:1], "--api", serve.api, *argv[1:]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ask_approve_at_two_levels_and_list(serve: ServeProcess, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    alice = ("--as-user", "alice", "--groups", "staff")
    code, out, err = _run(serve, capsys, "request", *alice, "--wallet", "dept-credits", "--subject", "研发部",
                          "--amount", "60000", "--reason", "Q4 reports", "--request-id", "q4")  # fmt: skip
    assert code == 0, err
    assert out.startswith("q4: pending: 60000 credits for dept-credits/研发部, asked by alice; approved by nobody yet")
    assert "next: a member of dept-heads-研发部" in out
    code, _out, err = _run(serve, capsys, "approve", "q4", *alice)
    assert code == 2 and "alice asked for it and may not approve it" in err
    code, out, err = _run(serve, capsys, "approve", "q4", "--as-user", "dora", "--groups", "dept-heads-研发部",
                          "--comment", "ok")  # fmt: skip
    assert code == 0 and "approved by dora (level 1)" in out and "next: a member of finance" in out, err
    monkeypatch.setenv("TOKENMETER_JWT", FIONA)  # the person by JWT, from the environment
    for _click in range(2):
        code, out, err = _run(serve, capsys, "approve", "q4")
        assert code == 0 and out.startswith("q4: approved:") and "fiona (level 2)" in out, err
    code, out, _err = _run(serve, capsys, "requests", "--state", "approved", "--format", "json")
    assert [request["id"] for request in json.loads(out)["requests"]] == ["q4"]
    code, out, _err = _run(serve, capsys, "requests", "--state", "pending")
    assert (code, out) == (0, "no top-up requests\n")
    serve.stop()
    with serve.store() as client:
        assert [entry.entry_id for entry in wallet_entries(client, "dept-credits/研发部")] == ["top_up:q4"]


def test_without_a_person_or_as_an_outsider_it_exits_2(serve: ServeProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _run(serve, capsys, "requests")
    assert code == 2 and "say who is acting: --jwt TOKEN (or TOKENMETER_JWT), or --as-user NAME" in err
    code, _out, err = _run(
        serve, capsys, "requests", "--jwt", jwt.encode({"sub": "x"}, "wrong-secret-of-32-bytes-or-more")
    )
    assert code == 2 and "401" in err and "send their JWT in X-Tokenmeter-JWT" in err
    code, _out, err = _run(serve, capsys, "request", "--jwt", FIONA, "--wallet", "dept-credits", "--subject", "研发部",
                           "--amount", "-3", "--reason", "x")  # fmt: skip
    assert code == 2 and "400" in err and "amount: a number above 0" in err
    code, _out, err = _run(serve, capsys, "reject", "nope", "--jwt", FIONA, "--comment", "no")
    assert code == 2 and "404" in err and "no top-up request 'nope'" in err
