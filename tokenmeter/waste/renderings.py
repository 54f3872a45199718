"""The waste report as JSON, CSV (one line per finding row and currency) and rich tables, one per finding."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.comparison.money_text import money_text
from tokenmeter.waste.spend import Money, Spend, decimal_text
from tokenmeter.waste.waste_report import BUDGET_NOTE, INTENT_NOTE, WasteReport

if TYPE_CHECKING:
    from rich.console import Console

CSV_COLUMNS: Final = ("finding", "period", "app", "app_route", "user", "department", "model", "prompt_hash", "rule",
                      "calls", "input_tokens", "output_tokens", "measure", "value", "amount", "currency", "virtual",
                      "unpriced_calls")  # fmt: skip


WITHOUT_OUTPUT: Final = ("heavy_user", "context_share")  # findings on input only: their output tokens stay empty


def render_json(report: WasteReport) -> str:
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"


def _lines(report: WasteReport) -> Iterator[tuple[str, dict[str, Any], Spend, str, Any]]:
    """(finding, who, spend, measure, value) for every row of every finding."""
    for r in report.repeated_prompts:
        yield (
            "repeated_prompt",
            {"app": r.app, "model": r.model, "prompt_hash": r.prompt_hash},
            r.spend,
            "users",
            r.users,
        )
    for h in report.heavy_users:
        spent = Spend(h.calls, h.input_tokens)
        yield "heavy_user", {"user": h.user, "department": h.department}, spent, "ratio", round(h.ratio, 6)
    for c in report.context:
        spent = Spend(c.calls, c.input_tokens)
        yield (
            "context_share",
            {"app": c.app, "app_route": c.app_route},
            spent,
            "context_share",
            round(c.context_share, 6),
        )
    for s in report.incomplete_streams:
        yield "incomplete_stream", {"app": s.app, "user": s.user}, s.incomplete, "streams", s.streams
    for t in report.retries:
        yield "retry", {"app": t.app, "user": t.user}, t.repeats, "", ""
    for m in (*report.cache, report.cache_total):
        yield "cache_replay", {"model": m.model}, m.hits, "hit_rate", round(m.hit_rate, 6)
    for rule in report.routing.rules if report.routing else ():
        spent = Spend(rule.matched, costs=rule.saved, unpriced_calls=rule.unpriced_moved)
        yield "routing_replay", {"rule": rule.rule}, spent, "moved", rule.moved


def render_csv(report: WasteReport) -> str:
    """One line per row and currency of its cost (none: one line with those empty). The cost is the row's spend:
    of the repeats, the incomplete streams, the hits; for routing, what its rule would have saved."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for finding, who, spent, measure, value in _lines(report):
        named = [who.get(name, "") for name in CSV_COLUMNS[2:9]]
        for money in spent.costs or (None,):
            costs = [decimal_text(money.amount), money.currency, str(money.virtual).lower()] if money else ["", "", ""]
            output = "" if finding in WITHOUT_OUTPUT else spent.output_tokens
            writer.writerow([finding, report.query.period.label, *named, spent.calls, spent.input_tokens, output,
                             measure, value, *costs, spent.unpriced_calls])  # fmt: skip
    return buffer.getvalue()


def money_lines(costs: tuple[Money, ...], unpriced: int = 0) -> str:
    lines = [money_text(m.amount, m.currency) + (" (virtual)" if m.virtual else "") for m in costs]
    return "\n".join(lines + [f"{unpriced:,} unpriced"] * bool(unpriced)) or "–"


def render_table(report: WasteReport, console: Console, store: str = "") -> None:
    """A table per finding (an empty finding: one line saying so), then the routing replay and what it assumes."""
    from tokenmeter.waste.table_sections import SECTIONS

    period = report.query.period
    console.print(f"Waste, {period.label} ({period.timezone})" + (f" — {store}" if store else ""))
    for section in SECTIONS:
        section(report, console)
    if report.routing is not None:
        console.print(f"routing replay: {INTENT_NOTE}; {BUDGET_NOTE}.")
    if any(m.virtual for m in report.cache_total.hits.costs):
        console.print("(virtual) = an internal price for a local model, not an invoice amount.")
