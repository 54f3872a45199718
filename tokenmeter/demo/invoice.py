"""The provider's side of the demo's month: the model server's ledger written as DeepSeek's usage export.

DeepSeek's usage download ([reconcile.md](../../docs/reconcile.md)) gives, per UTC day and model, the
requests, the cache-hit and cache-miss input tokens and the output tokens (reasoning is billed as output),
and the cost at the price valid that day. The demo's LLM server keeps such a ledger of every chat call it
answered (``llm_server.LedgerLine``), so the export written here is what DeepSeek would bill for the demo's
traffic, priced with the demo catalog, whose DeepSeek price changes in the middle of the month.

tokenmeter must agree with it exactly, except for what it could not see: a script's calls straight to the
model server with its own HTTP client (``bypass``), which the reconciliation must name to the request, the
token and the last decimal of the cost.
"""

from __future__ import annotations

import csv
import json
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from tokenmeter.catalog import ModelCatalog
from tokenmeter.demo.llm_server import LedgerLine
from tokenmeter.demo.workload import PASSAGES, QUESTIONS, SYSTEM_PROMPT
from tokenmeter.pricing import Price, TokenCounts, cost_of_tokens
from tokenmeter.reconcile.comparison import Reconciliation
from tokenmeter.reconcile.token_types import CACHED_INPUT, COST, INPUT, OUTPUT, REQUESTS

PROVIDER: Final = "deepseek"
MODELS: Final = ("deepseek-chat", "deepseek-reasoner")
# From the middle of the demo's month (00:00 UTC, DeepSeek's bill days are UTC): DeepSeek's price in the demo.
CHANGED_PRICE: Final = {"input": "2", "cached_input": "0.2", "output": "4"}
BYPASS_MODEL: Final = "deepseek-chat"
BYPASS_CALLS: Final = 3


def write_demo_catalog(directory: Path, change_at: datetime) -> Path:
    """A catalog file whose DeepSeek entries are the built-in ones with one more price from ``change_at``."""
    builtin = yaml.safe_load(resources.files("tokenmeter.catalog").joinpath("models.yaml").read_text("utf-8"))
    entries = [dict(entry) for entry in builtin if entry.get("match") in MODELS]
    for entry in entries:
        prices = entry["price"] if isinstance(entry["price"], list) else [entry["price"]]
        changed = {**prices[-1], **CHANGED_PRICE, "from": change_at, "source": "tokenmeter demo: a mid-month change"}
        entry["price"] = [*prices, changed]
        entry["note"] = "the built-in entry with the demo's price change (tokenmeter demo)"
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def write_export(ledgers: Iterable[Mapping[tuple[str, str], LedgerLine]], catalog: ModelCatalog,
                 directory: Path) -> list[Path]:  # fmt: skip
    """The ledgers' DeepSeek lines as the usage download's CSVs (amount-YYYY-M.csv, cost-YYYY-M.csv per month)."""
    lines: dict[tuple[str, str], LedgerLine] = {}
    for ledger in ledgers:
        for (day, model), line in ledger.items():
            if model in MODELS:
                lines[(day, model)] = _added(lines.get((day, model)), line)
    directory.mkdir(parents=True, exist_ok=True)
    months = sorted({day[:7] for day, _ in lines})
    written = []
    for month in months:
        year, number = month.split("-")
        in_month = sorted((key, line) for key, line in lines.items() if key[0].startswith(month))
        amount = directory / f"amount-{year}-{int(number)}.csv"
        cost = directory / f"cost-{year}-{int(number)}.csv"
        _write(amount, ["user_id", "utc_date", "model", "api_key_name", "api_key", "type", "price", "amount"],
               (row for (day, model), line in in_month for row in _amount_rows(day, model, line, catalog)))  # fmt: skip
        _write(cost, ["user_id", "utc_date", "model", "wallet_type", "cost", "currency"],
               (["demo-org", day, model, "Paid", str(billed_cost(line, _price(catalog, model, day))), "CNY"]
                for (day, model), line in in_month))  # fmt: skip
        written += [amount, cost]
    return written


def billed_cost(line: LedgerLine, price: Price) -> Decimal:
    """What the provider bills for a day's line: misses, hits and output (reasoning included) at the day's price."""
    tokens = TokenCounts(line.prompt_tokens, line.completion_tokens, cache_read=line.cache_hit_tokens)
    amount = cost_of_tokens(price, tokens).amount
    assert amount is not None
    return amount


def _price(catalog: ModelCatalog, model: str, day: str) -> Price:
    price = catalog.price_at(model, datetime.combine(date.fromisoformat(day), time(), UTC))
    if price is None:
        raise ValueError(f"the demo catalog has no price for {model} on {day}")
    return price


def _amount_rows(day: str, model: str, line: LedgerLine, catalog: ModelCatalog) -> list[list[str]]:
    price = _price(catalog, model, day)
    cached = price.cached_input if price.cached_input is not None else price.input
    key = ["demo-org", day, model, "chatchat", "sk-dem****demo"]
    return [
        [*key, "request_count", "", str(line.requests)],
        [*key, "input_cache_hit_tokens", str(cached), str(line.cache_hit_tokens)],
        [*key, "input_cache_miss_tokens", str(price.input), str(line.prompt_tokens - line.cache_hit_tokens)],
        [*key, "output_tokens", str(price.output), str(line.completion_tokens)],
    ]


def _write(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


def _added(total: LedgerLine | None, line: LedgerLine) -> LedgerLine:
    if total is None:
        return LedgerLine(line.requests, line.prompt_tokens, line.cache_hit_tokens, line.completion_tokens,
                          line.reasoning_tokens)  # fmt: skip
    return LedgerLine(total.requests + line.requests, total.prompt_tokens + line.prompt_tokens,
                      total.cache_hit_tokens + line.cache_hit_tokens, total.completion_tokens + line.completion_tokens,
                      total.reasoning_tokens + line.reasoning_tokens)  # fmt: skip


@dataclass
class Bypass:
    """What a script's direct calls to the model server used, as the server reported it (tokenmeter never saw them)."""

    day: date
    line: LedgerLine = field(default_factory=LedgerLine)


def bypass(base_url: str, calls: int = BYPASS_CALLS) -> Bypass:
    """``calls`` chat calls with urllib, not the openai SDK: a script that goes around tokenmeter."""
    made = Bypass(datetime.now(UTC).date())
    for index in range(calls):
        context = "\n\n".join(PASSAGES[index : index + 3])
        body = {"model": BYPASS_MODEL, "max_tokens": 128, "messages": [
            {"role": "system", "content": f"{SYSTEM_PROMPT}\n\n{context}"},
            {"role": "user", "content": QUESTIONS[index]},
        ]}  # fmt: skip
        request = urllib.request.Request(  # noqa: S310 - the demo's own server on loopback
            f"{base_url}/chat/completions", data=json.dumps(body).encode(), method="POST",
            headers={"content-type": "application/json", "authorization": "Bearer sk-script"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            usage: dict[str, Any] = json.load(response)["usage"]
        made.line = _added(made.line, LedgerLine(1, usage["prompt_tokens"], usage.get("prompt_cache_hit_tokens", 0),
                                                 usage["completion_tokens"]))  # fmt: skip
    return made


def bypass_differences(bypassed: Bypass, price: Price) -> dict[str, Decimal]:
    """The differences (tokenmeter minus the provider) the bypass must cause on its day's line, by type."""
    line = bypassed.line
    return {
        REQUESTS: -Decimal(line.requests),
        INPUT: -Decimal(line.prompt_tokens),
        CACHED_INPUT: -Decimal(line.cache_hit_tokens),
        OUTPUT: -Decimal(line.completion_tokens),
        COST: -billed_cost(line, price),
    }


@dataclass(frozen=True)
class MonthOfCalls:
    """The demo's month: the store its calls are in, its first day (UTC), the model servers' ledgers, the catalog
    file and the catalog it holds."""

    store_url: str
    first_day: date
    ledgers: tuple[Mapping[tuple[str, str], LedgerLine], ...]
    models: Path
    catalog: ModelCatalog


def reconcile_month(month: MonthOfCalls, bypassed: Bypass, price_change: datetime, directory: Path,
                    console: Any) -> bool:  # fmt: skip
    """Write the provider's export, reconcile the month with it as `tokenmeter reconcile` does, and check that
    the differences are exactly the bypass's. False (and why, printed) when they are not."""
    from tokenmeter.reconcile.renderings import render_table
    from tokenmeter.store import open_store
    from tokenmeter.store.reconcile_queries import reconcile

    files = write_export(month.ledgers, month.catalog, directory)
    console.print(f"[bold]6/6[/] the month against DeepSeek's bill: the model server's ledger written as DeepSeek's "
                  f"usage export ({len(files)} files in {directory}); its price changes on {price_change:%Y-%m-%d} "
                  f"({CHANGED_PRICE['input']} / {CHANGED_PRICE['cached_input']} / {CHANGED_PRICE['output']} CNY per 1M "
                  "input / cached input / output from then) ...")  # fmt: skip
    client = open_store(month.store_url)
    try:
        found = reconcile(client, PROVIDER, files, first=month.first_day.isoformat(),
                          last=datetime.now(UTC).date().isoformat(), catalog=month.catalog)  # fmt: skip
    finally:
        client.close()
    render_table(found, console)
    problems = unexplained(found, bypassed, month.catalog)
    if problems:
        console.print("[red]the reconciliation found differences the bypass does not explain:[/]")
        for line in problems:
            console.print(f"  {line}")
        return False
    line = bypassed.line
    console.print("     DeepSeek's export = tokenmeter's calls, every day and model of the month, to the token and "
                  f"the last decimal, except {line.requests} calls a script made with its own HTTP client on "
                  f"{bypassed.day}: {line.prompt_tokens:,} input ({line.cache_hit_tokens:,} cached) and "
                  f"{line.completion_tokens:,} output tokens tokenmeter never saw")  # fmt: skip
    reasoning = sum(line.reasoning_tokens for ledger in month.ledgers for (_, model), line in ledger.items()
                    if model in MODELS)  # fmt: skip
    console.print(f"     the {reasoning:,} reasoning tokens of deepseek-reasoner are billed as output on both sides; "
                  f"calls before {price_change:%Y-%m-%d} cost the old price, from then the new one")  # fmt: skip
    console.print(f"     again, or with your own export: TOKENMETER_MODELS={month.models} tokenmeter reconcile "
                  f"--provider {PROVIDER} --clickhouse-url {month.store_url} --from {month.first_day} "
                  f"--to {datetime.now(UTC).date()} {directory}/*.csv", soft_wrap=True, markup=False)  # fmt: skip
    return True


def unexplained(reconciliation: Reconciliation, bypassed: Bypass, catalog: ModelCatalog) -> list[str]:
    """What the reconciliation found beyond the bypass: [] when the month agrees to the last token otherwise."""
    differences = bypass_differences(bypassed, _price(catalog, BYPASS_MODEL, bypassed.day.isoformat()))
    expected = {token_type: amount for token_type, amount in differences.items() if amount}  # the report omits 0
    problems = [f"{row.kind}: {row.day} {row.model_key}" for row in reconciliation.rows if row.kind != "both"]
    for row in reconciliation.differing:
        found = {difference.token_type: difference.difference for difference in row.differences}
        if (row.day, row.model_key) != (bypassed.day, BYPASS_MODEL) or found != expected:
            problems.append(f"{row.day} {row.model_key}: {found} (the bypass explains {expected})")
    if bypassed.line.requests and not reconciliation.differing:
        problems.append(f"the bypass's {bypassed.line.requests} calls were not found")
    return problems
