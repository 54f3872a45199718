"""Wallets on a real chDB store: yearly grants and daily charges in the ledger, late usage charged later,
and the enforcer deciding on a wallet's credits (warning at 80 %, refusing at 0)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_requests import cost_series, metrics_request

from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf
from tokenmeter.credits.burn_down import wallet_balance
from tokenmeter.enforcer.admission import Enforcer
from tokenmeter.enforcer.decision import CheckRequest
from tokenmeter.enforcer.policy import parse_policy
from tokenmeter.enforcer.wallet_accounts import WalletAccounts
from tokenmeter.store import open_store
from tokenmeter.store.credit_ledger import wallet_entries
from tokenmeter.store.migrations import RenderOptions, migrate

SHANGHAI = ZoneInfo("Asia/Shanghai")
D = Decimal
POLICY = parse_policy("""
timezone: Asia/Shanghai
wallets:
  - name: dept-credits
    scope: department
    rates: {CNY: 10}
    yearly_grant: 1000
    grant_overrides: {研发部: 500}
budgets:
  - {name: dept-wallet, wallet: dept-credits, action: deny}
""")
RD = "dept-credits/研发部"


def _local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=SHANGHAI)


def _cost_series(department: str, model: str, started: datetime, points: list[tuple[datetime, str]],
                 virtual: bool = False) -> metrics_pb2.Metric:  # fmt: skip
    totals = [(_nanos(at), int(D(total) * 10**9)) for at, total in points]
    return cost_series(department, model, totals, _nanos(started), virtual=virtual)


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _insert(client: object, *metrics: metrics_pb2.Metric) -> None:
    payload = decode_protobuf(Signal.METRICS, metrics_request(*metrics, service="wallet-test").SerializeToString())
    insert_payloads(client, Signal.METRICS, [payload], IngestSchema.for_store(embedded=True))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    client = open_store(f"chdb://{tmp_path_factory.mktemp('wallets') / 'chdb'}")
    migrate(client, RenderOptions())
    _insert(client,
            # ¥10 on the 18th, ¥15 more on the 19th, ¥5 this morning (the 20th): 100, 150 and 50 credits
            _cost_series("研发部", "gpt-4o", _local(17, 9), [(_local(18, 12), "10"), (_local(19, 12), "25"),
                                                          (_local(20, 9), "30")]),
            # a local model's virtual price is charged too: ¥2 = 20 credits on the 19th
            _cost_series("研发部", "qwen2.5-7b-instruct", _local(19, 9), [(_local(19, 12), "2")], virtual=True),
            # a call nobody attributed is no department's
            _cost_series("", "gpt-4o", _local(19, 9), [(_local(19, 13), "7")]))  # fmt: skip
    yield client
    client.close()


def _amounts(client: object, account: str) -> dict[str, Decimal]:
    return {entry.entry_id: entry.amount for entry in wallet_entries(client, account)}  # type: ignore[arg-type]


def test_closed_days_are_charged_once_and_late_usage_later(store) -> None:
    accounts = WalletAccounts()
    now = _local(20, 10).astimezone(UTC)
    assert accounts.charge(store, POLICY, now) == 3  # the year's grant, the 18th and the 19th (today is open)
    assert _amounts(store, RD) == {"grant:dept-credits/研发部:2026": D(500),
                                   "charge:dept-credits/研发部:2026-11-18": D(100),
                                   "charge:dept-credits/研发部:2026-11-19": D(170)}  # fmt: skip
    assert accounts.charge(store, POLICY, now) == 0
    assert WalletAccounts().charge(store, POLICY, now) == 0  # a restarted enforcer finds them in the ledger
    # A call of the 19th exported only now (a new series), then the 20th closes.
    _insert(store, _cost_series("研发部", "gpt-4o", _local(19, 15), [(_local(19, 16), "1")]))
    assert accounts.charge(store, POLICY, _local(21, 0, 30).astimezone(UTC)) == 0  # within the grace hour
    assert accounts.charge(store, POLICY, _local(21, 10).astimezone(UTC)) == 2
    amounts = _amounts(store, RD)
    assert amounts["charge:dept-credits/研发部:2026-11-19#1"] == D(10)
    assert amounts["charge:dept-credits/研发部:2026-11-20"] == D(50)
    balance = wallet_balance(RD, wallet_entries(store, RD), _local(21, 10))
    assert (balance.available, balance.spent) == (D(170), D(330))  # 500 - (100 + 170 + 10 + 50)
    assert not [name for name in _ledger_accounts(store) if name not in {RD}]  # unattributed usage: nobody's


def _ledger_accounts(client: object) -> list[str]:
    return [row[0] for row in client.query("SELECT DISTINCT wallet FROM credit_ledger").result_rows]  # type: ignore[attr-defined]


def _check(enforcer: Enforcer, department: str, credits: str) -> object:
    request = CheckRequest(user="alice", department=department, app="kb", model="gpt-4o", input_tokens=10,
                           max_output_tokens=10, estimated_costs={"gpt-4o": (D(credits) / 10, "CNY")},
                           estimated_wallet_costs={"gpt-4o": {"credits (dept-credits)": D(credits)}})  # fmt: skip
    return enforcer.check(request)


def test_the_enforcer_decides_on_the_wallets_credits(store) -> None:
    now = _local(21, 10).astimezone(UTC)
    enforcer = Enforcer(POLICY, now=lambda: now)
    enforcer.charge_wallets(store)
    enforcer.refresh(store)
    key = ("dept-wallet", "研发部")
    limit = enforcer.snapshot.limits[key]
    charged = sum(amount for entry_id, amount in _amounts(store, RD).items() if entry_id.startswith("charge:"))
    assert charged in {D(320), D(330)}  # 330 after the test above (the 19th's late call), else 320
    assert (enforcer.snapshot.used[key].cost["credits (dept-credits)"], limit.cost) == (charged, D(500))
    first = _check(enforcer, "研发部", "50")  # 330 used: 66 %
    assert first.decision.action == "allow"
    second = _check(enforcer, "研发部", "50")  # 380 with the first held: 76 %
    assert second.decision.action == "allow"
    third = _check(enforcer, "研发部", "50")  # 430: past 80 %
    assert (third.decision.action, third.decision.threshold, third.decision.currency) == (
        "warn",
        0.8,
        "credits (dept-credits)",
    )
    # Today's usage (not charged yet) takes the rest: ¥20 = 200 credits > the 170 left.
    _insert(store, _cost_series("研发部", "gpt-4o", _local(21, 8), [(_local(21, 9), "20")]))
    enforcer.refresh(store)
    refused = _check(enforcer, "研发部", "1")
    assert (refused.decision.action, refused.decision.budget) == ("deny", "dept-wallet")
    assert "dept-wallet" in refused.decision.reason
    # Another department has its own wallet, with the policy's yearly grant before the ledger has it.
    assert _check(enforcer, "sales", "100").decision.action == "allow"


def test_a_wallet_with_no_credits_refuses_at_once(store) -> None:
    policy = parse_policy("""
timezone: Asia/Shanghai
wallets:
  - {name: topups-only, scope: department, subject: 法务部, rates: {CNY: 1}}
budgets:
  - {name: legal, wallet: topups-only, action: degrade}
""")
    now = _local(21, 10).astimezone(UTC)
    enforcer = Enforcer(policy, now=lambda: now)
    enforcer.charge_wallets(store)
    enforcer.refresh(store)
    assert _check(enforcer, "法务部", "1").decision.action == "degrade"
    assert _check(enforcer, "sales", "1").decision.action == "allow"  # the wallet is 法务部's alone


def test_a_checks_estimate_is_priced_in_each_wallets_unit() -> None:
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.enforcer.call_estimates import CallEstimates
    from tokenmeter.quota_wire import CheckBody

    policy = parse_policy("""
wallets:
  - {name: cny, scope: department, unit: CNY, charges_virtual: false}
  - {name: credits, scope: department, rates: {CNY: 10}}
budgets:
  - {name: a, wallet: cny}
  - {name: b, wallet: credits}
""")
    catalog = ModelCatalog.load(None)
    estimates = CallEstimates(catalog)
    request = estimates.request(policy, CheckBody(model="deepseek-chat", input_tokens=1000, max_output_tokens=500))
    amount, currency = request.estimated_costs["deepseek-chat"]
    assert currency == "CNY" and amount > 0
    assert request.estimated_wallet_costs["deepseek-chat"] == {"CNY (cny)": amount, "credits (credits)": amount * 10}
    local = estimates.request(policy, CheckBody(model="qwen2.5-7b-instruct", input_tokens=1000))
    price = catalog.price_for("qwen2.5-7b-instruct")
    assert price is not None and price.virtual  # a local model's virtual price: only the wallet that charges it
    assert set(local.estimated_wallet_costs["qwen2.5-7b-instruct"]) == {"credits (credits)"}
    # gpt-4o is priced in USD: a wallet with no USD rate gets no estimate (its charges would say so)
    assert "gpt-4o" not in estimates.request(policy, CheckBody(model="gpt-4o", input_tokens=10)).estimated_wallet_costs


def test_usage_in_a_currency_without_a_rate_is_not_charged_and_is_said(store, caplog) -> None:
    policy = parse_policy("""
timezone: Asia/Shanghai
wallets:
  - {name: usd-only, scope: department, subject: 研发部, rates: {USD: 72}, yearly_grant: 100}
budgets:
  - {name: rd-usd, wallet: usd-only}
""")
    accounts = WalletAccounts()
    with caplog.at_level("WARNING", logger="tokenmeter.enforcer.wallet_accounts"):
        assert accounts.charge(store, policy, _local(21, 10).astimezone(UTC)) == 0
    assert "no rate from CNY to credits" in caplog.text and "usd-only" in caplog.text
    assert _amounts(store, "usd-only/研发部") == {}  # not even the grant: the wallet's pass stopped before writing


def test_the_months_statement_agrees_with_the_ledger_once_its_days_are_charged(store) -> None:
    from tokenmeter.credits.statement import StatementMonth
    from tokenmeter.store.statement_queries import read_statement

    month = StatementMonth.parse("2026-11", SHANGHAI)
    after = _local(22, 10).astimezone(UTC)  # every day with usage has closed
    WalletAccounts().charge(store, POLICY, after)
    wallet = read_statement(store, "研发部", month, POLICY.wallets, after).wallets[0]
    assert wallet.account == RD and wallet.usage_credits > 0
    assert (wallet.charged, wallet.not_yet_charged) == (wallet.usage_credits, 0)  # to the last credit
    ledger = wallet_entries(store, RD)
    assert wallet.charged == sum(e.amount for e in ledger if e.kind == "charge")
    assert wallet.balance == wallet_balance(RD, ledger, after).available
