"""Top-up requests through a real `tokenmeter serve` (chDB store, a policy with wallets, an API token): people
known by a trusted proxy's headers or a verified JWT; self-approval refused; a second level above the amount;
the top-up in the credits ledger exactly once after the approval is clicked twice."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from serve_process import ServeProcess

from tokenmeter.store.credit_ledger import wallet_entries

TOKEN = "credits-api-token"
SECRET = "credits-jwt-secret-of-32-bytes-or-more"
POLICY = """\
version: 1
timezone: Asia/Shanghai
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10}
    yearly_grant: 100000
    approvals:
      approvers: ["dept-heads-{subject}"]
      second_level_above: 50000
      second_level_approvers: [finance]
  - name: pool
    scope: organisation
    rates: {CNY: 10}
budgets: []
"""
HEADS = "dept-heads-研发部"
# Via the trusted proxy (loopback), which sends non-ASCII group names as UTF-8.
ALICE = {"x-forwarded-user": "alice", "x-forwarded-groups": "staff,研发部".encode()}
DORA = {"x-forwarded-user": "dora", "x-forwarded-groups": f"{HEADS},finance".encode()}
BOB = {"x-tokenmeter-jwt": jwt.encode({"sub": "bob", "department": HEADS}, SECRET, algorithm="HS256")}
FIONA = {"x-tokenmeter-jwt": jwt.encode({"sub": "fiona", "groups": ["finance"]}, SECRET, algorithm="HS256")}


def _start(tmp_path: Path, **env: str) -> ServeProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    environment = {"TOKENMETER_API_TOKEN": TOKEN, "TOKENMETER_JWT_SECRET": SECRET, **env}
    return ServeProcess(tmp_path, ["--policy", str(policy)], environment).start()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    process = _start(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def _call(serve: ServeProcess, method: str, path: str, person: dict[str, Any], body: Any = None,
          token: str | None = TOKEN, params: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    headers = {**person, **({"authorization": f"Bearer {token}"} if token else {})}
    return httpx.request(method, f"{serve.api}{path}", headers=headers, json=body, params=params, timeout=30)


def _ask(serve: ServeProcess, amount: str, request_id: str, person: dict[str, Any] = ALICE) -> httpx.Response:
    body = {"wallet": "dept-credits", "subject": "研发部", "amount": amount, "reason": "quarter-end reports",
            "request_id": request_id}  # fmt: skip
    return _call(serve, "POST", "/v1/credits/requests", person, body)


def test_above_the_amount_a_head_then_finance_approve_and_the_top_up_is_recorded_once(serve: ServeProcess) -> None:
    created = _ask(serve, "60000", "big-1")
    assert created.status_code == 201, created.text
    assert (created.json()["state"], created.json()["levels_needed"], created.json()["requester"]) == (
        "pending",
        2,
        "alice",
    )
    assert _ask(serve, "60000", "big-1").status_code == 200  # the same ask again: one request
    assert _ask(serve, "70000", "big-1").status_code == 409  # its id names another ask
    first = _call(serve, "POST", "/v1/credits/requests/big-1/approve", DORA, {"comment": "ok for Q4"})
    assert first.status_code == 200, first.text
    assert (first.json()["state"], first.json()["next_level"], first.json()["next_approvers"]) == (
        "pending",
        2,
        ["finance"],
    )
    assert _call(serve, "POST", "/v1/credits/requests/big-1/approve", DORA).status_code == 200  # clicked twice: once
    refused = _call(serve, "POST", "/v1/credits/requests/big-1/approve", BOB)  # a head, not finance
    assert refused.status_code == 403 and "bob may not approve it at level 2 of 2" in refused.json()["error"]
    for _click in range(2):
        final = _call(serve, "POST", "/v1/credits/requests/big-1/approve", FIONA)
        assert final.status_code == 200 and final.json()["state"] == "approved", final.text
    assert [(a["level"], a["by"]) for a in final.json()["approvals"]] == [(1, "dora"), (2, "fiona")]
    late = _call(serve, "POST", "/v1/credits/requests/big-1/reject", BOB, {"comment": "too late"})
    assert late.status_code == 409 and "it is approved already" in late.json()["error"]
    listed = _call(serve, "GET", "/v1/credits/requests", BOB, params={"state": "approved", "wallet": "dept-credits"})
    assert [request["id"] for request in listed.json()["requests"]] == ["big-1"]
    serve.stop()
    with serve.store() as client:
        (entry,) = wallet_entries(client, "dept-credits/研发部")
    assert (entry.entry_id, entry.kind, entry.amount, entry.actor) == (
        "top_up:big-1",
        "top_up",
        Decimal(60000),
        "fiona",
    )


def test_nobody_approves_their_own_request_and_bad_input_is_refused(serve: ServeProcess) -> None:
    assert _ask(serve, "1000", "small-1", DORA).status_code == 201
    own = _call(serve, "POST", "/v1/credits/requests/small-1/approve", DORA)
    assert own.status_code == 403 and "dora asked for it and may not approve it" in own.json()["error"]
    outsider = _call(serve, "POST", "/v1/credits/requests/small-1/approve", ALICE)
    assert outsider.status_code == 403 and f"that takes a member of {HEADS}" in outsider.json()["error"]
    no_comment = _call(serve, "POST", "/v1/credits/requests/small-1/reject", BOB)
    assert no_comment.status_code == 400 and "a reject needs a comment" in no_comment.json()["error"]
    rejected = _call(serve, "POST", "/v1/credits/requests/small-1/reject", BOB, {"comment": "use last year's rest"})
    assert rejected.status_code == 200 and rejected.json()["ended"]["comment"] == "use last year's rest"
    assert _call(serve, "POST", "/v1/credits/requests/nope/approve", BOB).status_code == 404
    for amount, message in (("0", "amount: a number above 0"), ("lots", "amount: a number above 0")):
        answer = _ask(serve, amount, "bad-1")
        assert answer.status_code == 400 and message in answer.json()["error"]
    unknown = _call(serve, "POST", "/v1/credits/requests", ALICE, {"wallet": "nope", "amount": "5", "reason": "x"})
    assert (
        unknown.status_code == 400
        and "unknown wallet 'nope' (the policy's wallets: dept-credits, pool)" in unknown.text
    )
    pool = _call(serve, "POST", "/v1/credits/requests", ALICE, {"wallet": "pool", "amount": "5", "reason": "x"})
    assert pool.status_code == 400 and "'pool' has no approvals in the policy" in pool.json()["error"]
    listed = _call(serve, "GET", "/v1/credits/requests", ALICE, params={"state": "rejected"}).json()["requests"]
    assert [(request["id"], request["ended"]["by"]) for request in listed] == [("small-1", "bob")]


def test_the_api_token_alone_names_nobody_and_headers_count_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    serve = _start(tmp_path, TOKENMETER_TRUSTED_PROXIES="192.0.2.0/24")  # loopback is not a trusted proxy here
    try:
        assert _ask(serve, "10", "r-1", {}).status_code == 401
        nobody = _ask(serve, "10", "r-1", ALICE)  # identity headers from an untrusted peer: not believed
        assert nobody.status_code == 401 and "send their JWT in X-Tokenmeter-JWT" in nobody.json()["error"]
        forged = {
            "x-tokenmeter-jwt": jwt.encode({"sub": "bob"}, "another-secret-of-32-bytes-or-more", algorithm="HS256")
        }
        assert _ask(serve, "10", "r-1", forged).status_code == 401
        assert _call(serve, "GET", "/v1/credits/requests", BOB, token=None).status_code == 401  # the API token too
        made = _ask(serve, "10", "r-1", BOB)
        assert made.status_code == 201 and made.json()["requester"] == "bob"
    finally:
        serve.stop()
