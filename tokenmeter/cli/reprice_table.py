"""`tokenmeter reprice` as tables: per day x model x currency, the totals per currency, then what it did not change."""

from __future__ import annotations

from datetime import datetime, time
from typing import TYPE_CHECKING

from tokenmeter.cli.reprice_summary import COUNTERS_UNCHANGED, UNPRICED, GroupTally, RepriceSummary, decimal_text

if TYPE_CHECKING:
    from rich.console import Console


def render_table(summary: RepriceSummary, console: Console, run_id: str | None = None) -> None:
    """The summary for people; ``run_id`` names the log rows of an applied run."""
    from rich.table import Table
    from rich.text import Text

    mode = "applied" if summary.applied else "dry run"
    title = f"Reprice {summary.first.isoformat()} .. {summary.last.isoformat()} (UTC days), {mode}"
    if summary.model_filter is not None:
        title += f", models {summary.model_filter}"
    console.print(Text(title, style="bold"))
    console.print(Text(f"catalog: {summary.catalog}"))
    if not summary.groups:
        console.print("No calls to reprice in the range.")
    else:
        table = Table(show_footer=False)
        for name in ("day", "model", "currency", "calls", "rewritten", "old cost", "new cost", "difference",
                     "price now (from, tier)", "now priced / unpriced"):  # fmt: skip
            table.add_column(name, justify="right" if name in _NUMBERS else "left")
        for key, tally in summary.rows():
            table.add_row(key.day.isoformat(), Text(key.model), _currency(key.currency, key.virtual),
                          *_tally_cells(tally), _prices(tally), _flips(tally))  # fmt: skip
        console.print(table)
        totals = Table(title="Totals per currency")
        for name in ("currency", "calls", "rewritten", "old cost", "new cost", "difference"):
            totals.add_column(name, justify="right" if name in _NUMBERS else "left")
        for (currency, virtual), tally in summary.totals():
            totals.add_row(_currency(currency, virtual), *_tally_cells(tally))
        console.print(totals)
    for line in notes(summary, run_id):
        console.print(Text(line))


_NUMBERS = frozenset({"calls", "rewritten", "old cost", "new cost", "difference"})


def notes(summary: RepriceSummary, run_id: str | None) -> list[str]:
    """What the tables do not say: what was left alone, could not be seen, or is not changed."""
    lines = []
    hits, not_billed = summary.left_alone["answer_cache_hit"], summary.left_alone["not_billed"]
    if hits or not_billed:
        lines.append(f"Left as they are: {hits:,} answer-cache hits (no model was called; cost 0) and {not_billed:,} "
                     "calls nothing was billed for (refused by a quota, or no answer from the server).")  # fmt: skip
    if summary.cut:
        lines.append(f"{summary.cut:,} calls cost more decimals than the 12 llm_usage keeps: stored cut to 12, as "
                     "ClickHouse stores every call's cost.")  # fmt: skip
    if summary.not_seen:
        lines.append(f"{summary.not_seen:,} of the {summary.counted_calls:,} calls the usage counters hold in the "
                     "range have no row in llm_usage (sampled-out traces, or spans not exported): reprice cannot see "
                     "them, and their cost stays as it was.")  # fmt: skip
    lines.append(COUNTERS_UNCHANGED)
    if summary.applied and not summary.rewritten:
        lines.append("Nothing to rewrite: llm_usage holds these costs already.")
    elif summary.applied:
        where = f" (cost_reprices, run {run_id})" if run_id else ""
        lines.append(f"Rewritten: {summary.rewritten:,} calls in llm_usage; logged{where}.")
    else:
        lines.append(f"Dry run: nothing written. {summary.rewritten:,} calls would be rewritten; add --apply to write.")
    return lines


def _currency(currency: str, virtual: bool) -> str:
    if currency == UNPRICED:
        return "unpriced"
    return f"{currency} virtual" if virtual else currency


def _tally_cells(tally: GroupTally) -> tuple[str, ...]:
    return (f"{tally.calls:,}", f"{tally.rewritten:,}", decimal_text(tally.old_cost), decimal_text(tally.new_cost),
            _signed(tally))  # fmt: skip


def _signed(tally: GroupTally) -> str:
    text = decimal_text(tally.difference)
    return text if tally.difference <= 0 else f"+{text}"


def _prices(tally: GroupTally) -> str:
    """E.g. "2026-11-15, tier 1" per price used; "since always" for an undated price."""
    texts = []
    for when, tier in sorted(tally.prices, key=lambda p: (p[0] is not None, p[0] or datetime.min, p[1] or -1)):
        since = "since always" if when is None else _moment(when)
        texts.append(since if tier is None else f"{since}, tier {tier}")
    return "\n".join(texts) or "–"


def _moment(when: datetime) -> str:
    return when.date().isoformat() if when.time() == time(0) else when.isoformat()


def _flips(tally: GroupTally) -> str:
    if not (tally.became_priced or tally.became_unpriced):
        return ""
    return f"+{tally.became_priced:,} / +{tally.became_unpriced:,}"
