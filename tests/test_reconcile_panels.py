"""The Invoice reconciliation board and its alert rule, run on chDB as Grafana runs them: the panel's monthly
differences per provider and model add up to `tokenmeter reconcile`'s month totals; the alert fires for exactly the
provider, month and token type past 0.5 % (this month and the last only), and is routed like the other warnings."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from grafana_alert_rules import ALERTING, RULES, fires, instances, label_names
from grafana_macros import TimeRange, expand
from reconcile_calls import AMOUNT, COST, DEEPSEEK_CALLS, call
from waste_calls import store_waste_calls

from tokenmeter import semconv
from tokenmeter.dashboards.grafana import build
from tokenmeter.dashboards.macros import bind
from tokenmeter.dashboards.reconcile_panels import reconciliation_board
from tokenmeter.settings import get_settings
from tokenmeter.store.reconcile_queries import reconcile

ROOT = Path(__file__).resolve().parents[1]
RULE = "tokenmeter-invoice-difference"
NOVEMBER = TimeRange(datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC))


@pytest.fixture(autouse=True)
def builtin_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENMETER_MODELS", raising=False)
    get_settings.cache_clear()


def _deepseek_november(client: Any, directory: Path) -> Any:
    store_waste_calls(client, DEEPSEEK_CALLS)
    (amount := directory / "amount.csv").write_text(AMOUNT, encoding="utf-8")
    (cost := directory / "cost.csv").write_text(COST, encoding="utf-8")
    return reconcile(client, "deepseek", [amount, cost])


def _panel_rows(client: Any, span: TimeRange) -> list[tuple[Any, ...]]:
    sql = reconciliation_board().panel(1).sql
    grafana = client.query(expand(sql, {}, span, {})).result_rows
    bound_sql, parameters = bind(sql, {}, span)
    assert client.query(bound_sql, parameters=parameters).result_rows == grafana  # the web page's way, the same rows
    return grafana


def test_the_board_is_built_and_committed() -> None:
    board = json.loads((ROOT / "dashboards" / "tokenmeter-reconcile.json").read_text(encoding="utf-8"))
    assert build()["tokenmeter-reconcile.json"] == json.dumps(board, ensure_ascii=False, indent=2) + "\n"
    assert [panel["title"] for panel in board["panels"]] == ["Monthly difference: tokenmeter against the invoice"]
    assert [variable["name"] for variable in board["templating"]["list"]] == ["datasource"]


def test_the_panel_adds_up_to_the_commands_month_totals(migrated_store: Any, tmp_path: Path) -> None:
    """Whatever day of November the range touches, the whole month; the models the provider billed, either side."""
    result = _deepseek_november(migrated_store, tmp_path)
    rows = _panel_rows(migrated_store, NOVEMBER)
    by_model = {
        (model, token_type): (ours, theirs, difference, relative)
        for month, provider, model, token_type, ours, theirs, difference, relative in rows
    }
    assert {(month, provider) for month, provider, *_ in rows} == {("2026-11", "deepseek")}
    assert by_model[("deepseek-chat", "output")] == (Decimal(730), Decimal(750), Decimal(-20), round(-20 / 750, 6))
    assert by_model[("deepseek-chat", "cost")][:3] == (Decimal("0.0277"), Decimal("0.0278"), Decimal("-0.0001"))
    assert by_model[("deepseek-coder", "requests")] == (Decimal(0), Decimal(3), Decimal(-3), -1.0)  # billed only
    assert by_model[("deepseek-reasoner", "cached_input")] == (Decimal(0), Decimal(0), Decimal(0), None)
    assert ("deepseek-coder", "cached_input") not in by_model  # neither side has any
    assert {model for model, _type in by_model} == {"deepseek-chat", "deepseek-reasoner", "deepseek-coder"}
    for total in result.totals:  # the command's: no model the catalog adds here, so the same calls
        assert sum(ours for (_m, t), (ours, *_rest) in by_model.items() if t == total.token_type) == total.tokenmeter
        assert sum(theirs for (_m, t), (_o, theirs, *_r) in by_model.items() if t == total.token_type) == total.provider
    assert (
        _panel_rows(migrated_store, TimeRange(datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 9, tzinfo=UTC)))
        == []
    )


def _month_start(months_back: int) -> date:
    first = datetime.now(UTC).date().replace(day=1)
    for _ in range(months_back):
        first = (first - timedelta(days=1)).replace(day=1)
    return first


def _alert_export(directory: Path) -> Path:
    """This month: cost 1 % over tokenmeter's, a cache hit count of 0 where tokenmeter counted 50; last month:
    input 0.4 % under; three months ago: far off (not this month or the last: no instance)."""
    now, last, old = (_month_start(n) + timedelta(days=1) for n in (0, 1, 3))
    lines = ["user_id,utc_date,model,api_key_name,api_key,type,price,amount"]
    for day, tokens in ((now, (1, 0, 1000, 100)), (last, (1, None, 1004, 100)), (old, (9, None, 9, 9))):
        kinds = zip(
            ("request_count", "input_cache_hit_tokens", "input_cache_miss_tokens", "output_tokens"), tokens, strict=True
        )
        lines += [f"u,{day},deepseek-chat,kb,sk,{kind},,{count}" for kind, count in kinds if count is not None]
    (amount := directory / "amount.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "cost.csv").write_text(
        f"user_id,utc_date,model,wallet_type,cost,currency\nu,{now},deepseek-chat,"
        f"Paid,0.0101,CNY\nu,{last},deepseek-chat,Paid,0.0100,CNY\n",
        encoding="utf-8",
    )
    return amount


def test_the_alert_fires_for_exactly_the_months_past_the_threshold(migrated_store: Any, tmp_path: Path) -> None:
    days = [datetime.combine(_month_start(n) + timedelta(days=1), datetime.min.time(), UTC) for n in (0, 1, 3)]
    store_waste_calls(
        migrated_store,
        [
            call(
                "alice",
                "deepseek-chat",
                days[0],
                (1050, 100),
                "0.0100",
                **{semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 50},
            ),
            call("alice", "deepseek-chat", days[1], (1000, 100), "0.0100"),
            call("alice", "deepseek-chat", days[2], (1000, 100), "0.0100"),
        ],
    )
    amount = _alert_export(tmp_path)
    reconcile(migrated_store, "deepseek", [amount, tmp_path / "cost.csv"])
    this, last = (f"{_month_start(n):%Y-%m}" for n in (0, 1))
    found = instances(migrated_store, RULE)
    assert set(found) == {
        ("deepseek", month, t) for month in (this, last) for t in ("requests", "input", "output", "cost")
    } | {("deepseek", this, "cached_input")}
    assert found[("deepseek", this, "input")] == pytest.approx(5.0)  # 1,050 against 1,000: the hit is input too
    assert found[("deepseek", last, "input")] == pytest.approx(4 * 100 / 1004)
    assert {labels for labels, value in found.items() if fires(RULE, value)} == {
        ("deepseek", this, "input"),
        ("deepseek", this, "cached_input"),
        ("deepseek", this, "cost"),
    }
    assert found[("deepseek", this, "cached_input")] == 100.0  # the export counted none


def test_the_alert_is_routed_and_names_only_its_labels(migrated_store: Any) -> None:
    rule = RULES[RULE]
    assert (rule["dashboardUid"], rule["panelId"]) == ("tokenmeter-reconcile", 1)
    used = set(re.findall(r"\$\$labels\.(\w+)", " ".join(rule["annotations"].values())))
    assert used <= set(label_names(migrated_store, RULE)) == {"provider", "month", "token_type"}
    assert rule["labels"] == {"severity": "warning", "team": "llm-platform"}
    group = next(group for group in ALERTING["groups"] if group["name"] == "tokenmeter-reconciliation")
    assert [r["uid"] for r in group["rules"]] == [RULE]
