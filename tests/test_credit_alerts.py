"""The credits' Grafana alert rules, evaluated offline on chDB: ledgers and top-up requests written through the
store's own functions (tests/support/credit_rows.py), each rule's query run as Grafana runs it, its condition
evaluated per instance; which wallets and requests fire is asserted exactly, and the numbers against the core."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from credit_rows import ACCOUNTS, ZONE, CreditRows, write_credit_rows
from grafana_alert_rules import ALERTING, RULES, fires, instances, label_names

from tokenmeter.credits.burn_down import wallet_balance
from tokenmeter.credits.projection import projection
from tokenmeter.store.credit_ledger import wallet_entries

ROOT = Path(__file__).resolve().parents[1]
CREDIT_RULES = ("tokenmeter-wallet-runs-out", "tokenmeter-wallet-empty", "tokenmeter-topup-pending",
                "tokenmeter-topup-decided")  # fmt: skip


@pytest.fixture(scope="module")
def credit_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, CreditRows]]:
    from tokenmeter.store import open_store
    from tokenmeter.store.migrations import RenderOptions, migrate

    client = open_store(f"chdb://{tmp_path_factory.mktemp('credit-alerts') / 'chdb'}")
    try:
        migrate(client, RenderOptions())
        yield client, write_credit_rows(client)
    finally:
        client.close()


def _firing(client: Any, uid: str) -> dict[tuple[str, ...], float]:
    return {labels: value for labels, value in instances(client, uid).items() if fires(uid, value)}


def _routed_to(labels: dict[str, str]) -> set[str]:
    """The contact points the notification policy sends an alert with ``labels`` to (its routes all continue)."""
    policy = ALERTING["policies"][0]
    matched = {
        route["receiver"]
        for route in policy["routes"]
        if all(op == "=" and labels.get(name) == value for name, op, value in route["object_matchers"])
    }
    return matched or {policy["receiver"]}


def test_the_credit_rules_are_routed_and_their_annotations_name_only_their_labels(
    credit_store: tuple[Any, CreditRows],
) -> None:
    store, _rows = credit_store
    assert [rule["uid"] for group in ALERTING["groups"] if group["name"] == "tokenmeter-credits"
            for rule in group["rules"]] == list(CREDIT_RULES)  # fmt: skip
    for uid in CREDIT_RULES:
        rule = RULES[uid]
        assert rule["labels"]["team"] == "llm-platform"
        assert "audit-webhook" in _routed_to(rule["labels"])
        used = set(re.findall(r"\$\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        assert used <= set(label_names(store, uid)), (uid, used)
    assert _routed_to(RULES["tokenmeter-topup-pending"]["labels"]) == {"audit-webhook", "ops-dingtalk"}
    assert "ops-wecom" in _routed_to(RULES["tokenmeter-wallet-empty"]["labels"])  # critical
    # Each links to its panel of the Credits board (Grafana adds the dashboard and panel links to notifications).
    board = json.loads((ROOT / "dashboards" / "tokenmeter-credits.json").read_text(encoding="utf-8"))
    panels = {panel["id"]: panel["title"] for panel in board["panels"]}
    linked = {uid: (RULES[uid]["dashboardUid"], panels[RULES[uid]["panelId"]]) for uid in CREDIT_RULES}
    assert linked == {
        "tokenmeter-wallet-runs-out": (board["uid"], "When the credits run out"),
        "tokenmeter-wallet-empty": (board["uid"], "Credits this year (ledger approximation)"),
        "tokenmeter-topup-pending": (board["uid"], "Pending top-up requests"),
        "tokenmeter-topup-decided": (board["uid"], "Recent top-ups"),
    }


def test_a_wallet_running_out_within_14_days_fires(credit_store: tuple[Any, CreditRows]) -> None:
    store, rows = credit_store
    found = instances(store, "tokenmeter-wallet-runs-out")
    expected = {}
    for account in ACCOUNTS:
        entries = wallet_entries(store, account)
        available = wallet_balance(account, entries, datetime.now(UTC)).available
        ahead = projection(entries, available, rows.today, ZONE)
        if available > 0 and ahead.days_left is not None:
            wallet, _, subject = account.partition("/")
            expected[(account, wallet, subject)] = float(ahead.days_left)
    assert found == expected
    assert set(found) == {
        ("dept-credits/研发部", "dept-credits", "研发部"),
        ("dept-credits/销售部", "dept-credits", "销售部"),
    }
    assert _firing(store, "tokenmeter-wallet-runs-out") == {("dept-credits/销售部", "dept-credits", "销售部"): 2.0}


def test_a_wallet_at_or_below_0_fires(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows = credit_store
    found = instances(store, "tokenmeter-wallet-empty")
    now = datetime.now(UTC)
    assert found == {(account, *(account.split("/") if "/" in account else (account, ""))):
                     float(wallet_balance(account, wallet_entries(store, account), now).available)
                     for account in ACCOUNTS}  # fmt: skip
    assert _firing(store, "tokenmeter-wallet-empty") == {("dept-credits/客服部", "dept-credits", "客服部"): -1000.0}


def test_each_pending_request_fires_with_its_ask_and_the_level_it_waits_for(
    credit_store: tuple[Any, CreditRows],
) -> None:
    store, rows = credit_store
    names = label_names(store, "tokenmeter-topup-pending")
    firing = [dict(zip(names, labels, strict=True)) | {"hours_left": value}
              for labels, value in _firing(store, "tokenmeter-topup-pending").items()]  # fmt: skip
    by_id = {alert.pop("request_id"): alert for alert in firing}
    assert set(by_id) == {"r-pending-1", "r-pending-2"}  # not the approved, rejected, cancelled or expired ones
    first = by_id["r-pending-1"]
    assert {k: first[k] for k in ("account", "wallet", "subject", "amount", "requester", "next_level", "approved_by")} \
        == {"account": "dept-credits/研发部", "wallet": "dept-credits", "subject": "研发部", "amount": "60000",
            "requester": "alice", "next_level": "2", "approved_by": "dora"}  # fmt: skip
    assert (by_id["r-pending-2"]["next_level"], by_id["r-pending-2"]["amount"]) == ("1", "5000")
    # Created 60 and 10 minutes before the rows' moment, each expires 7 days after.
    assert 7 * 24 - 1.1 <= first["hours_left"] <= 7 * 24 - 0.9
    expires = rows.now + timedelta(days=7) - timedelta(minutes=60)
    assert first["expires"] == expires.strftime("%Y-%m-%d %H:%M:%S")  # UTC


def test_a_decided_request_notifies_its_requester_once(credit_store: tuple[Any, CreditRows]) -> None:
    store, _rows = credit_store
    names = label_names(store, "tokenmeter-topup-decided")
    found = {dict(zip(names, labels, strict=True))["request_id"]: (dict(zip(names, labels, strict=True)), value)
             for labels, value in instances(store, "tokenmeter-topup-decided").items()}  # fmt: skip
    # Decided in the last hour: approved 5, rejected 4 and 40 minutes ago, expired 5 minutes ago.
    assert set(found) == {"r-approved", "r-rejected", "r-rejected-earlier", "r-expired-now"}
    decided = {
        request_id: (labels["decision"], labels["decided_by"], labels["requester"], labels["comment"])
        for request_id, (labels, value) in found.items()
        if fires("tokenmeter-topup-decided", value)
    }
    assert decided == {
        "r-approved": ("approved", "dora", "carol", ""),
        "r-rejected": ("rejected", "sam", "bob", "not this quarter"),
        "r-expired-now": ("expired", "", "erin", ""),
    }
    assert found["r-approved"][0]["approved_by"] == "dora" and 4.9 <= found["r-approved"][1] <= 6
