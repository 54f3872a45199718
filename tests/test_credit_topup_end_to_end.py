"""The way out, end to end on a real `tokenmeter serve`: a department's usage, exported to serve's OTLP
receiver, uses up its yearly credits and it is degraded; a member asks for a top-up, the department head
approves it as another SSO identity; the next check is allowed, and the wallet's standing shows the credits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from otlp_requests import cost_series, metrics_request, post
from serve_process import ServeProcess
from waiting import wait_for

TOKEN = "topup-e2e-token"
POLICY = """\
version: 1
timezone: Asia/Shanghai
wallets:
  - name: rd-credits
    scope: department
    subject: 研发部
    rates: {CNY: 10, USD: 72}
    yearly_grant: 50
    approvals:
      approvers: ["dept-heads-{subject}"]
budgets:
  - {name: rd-wallet, wallet: rd-credits, action: degrade}
"""
MEMBER = {"x-forwarded-user": "alice", "x-forwarded-groups": "研发部".encode()}
HEAD = {"x-forwarded-user": "dora", "x-forwarded-groups": "dept-heads-研发部".encode()}


def _call(serve: ServeProcess, method: str, path: str, person: dict[str, Any], body: Any = None) -> httpx.Response:
    headers = {**person, "authorization": f"Bearer {TOKEN}"}
    return httpx.request(method, f"{serve.api}{path}", headers=headers, json=body, timeout=30)


def _check(serve: ServeProcess) -> dict[str, Any]:
    body = {"user": "alice", "department": "研发部", "app": "kb", "model": "gpt-4o", "input_tokens": 1000,
            "max_output_tokens": 500, "dry_run": True}  # fmt: skip
    response = _call(serve, "POST", "/v1/check", {}, body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_degraded_department_asks_its_head_approves_and_the_next_call_is_allowed(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    # A 1 s refresh to see the usage; the top-up is read at once because the approval wakes the enforcer.
    serve = ServeProcess(tmp_path, ["--policy", str(policy), "--refresh-interval", "1"],
                         {"TOKENMETER_API_TOKEN": TOKEN}).start()  # fmt: skip
    try:
        assert _check(serve)["decision"] == "allow"  # 50 credits this year, none used
        now = time.time_ns()
        spent = cost_series("研发部", "gpt-4o", [(now, 6 * 10**9)], now - 60 * 10**9)  # ¥6 = 60 credits
        assert post(serve.otlp_http, "metrics", metrics_request(spent).SerializeToString()).status_code == 200
        assert wait_for(lambda: _check(serve)["decision"] == "degrade", timeout=30), "the usage never counted"
        stopped = _check(serve)
        assert (stopped["budget"], stopped["used_cost"], stopped["limit_cost"]) == ("rd-wallet", "60", "50")
        asked = _call(
            serve,
            "POST",
            "/v1/credits/requests",
            MEMBER,
            {"wallet": "rd-credits", "subject": "研发部", "amount": "2000", "reason": "Q4 reports"},
        )
        assert asked.status_code == 201, asked.text
        request_id = asked.json()["id"]
        own = _call(serve, "POST", f"/v1/credits/requests/{request_id}/approve", MEMBER)
        assert own.status_code == 403, own.text  # nobody approves their own request
        approved_at = time.monotonic()
        approved = _call(serve, "POST", f"/v1/credits/requests/{request_id}/approve", HEAD, {"comment": "ok"})
        assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text
        assert wait_for(lambda: _check(serve)["decision"] == "allow", timeout=30), "the top-up never arrived"
        print(f"allowed {time.monotonic() - approved_at:.2f} s after the approval")  # docs/credits.md
        standing = _call(serve, "GET", "/v1/credits/wallets", {}).json()["wallets"]
        assert [(row["account"], row["used"], row["credits"], row["available"]) for row in standing] == [
            ("rd-credits/研发部", "60", "2050", "1990")  # the yearly 50 and the top-up, less the 60 used
        ]
    finally:
        serve.stop()
