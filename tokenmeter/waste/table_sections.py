"""The waste report's table, one section per finding (what each shows: docs/waste.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from tokenmeter.waste.spend import Spend

if TYPE_CHECKING:
    from rich.console import Console

    from tokenmeter.waste.waste_report import WasteReport

Row = Sequence[str]


def _table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Row], empty: str) -> None:
    from rich.table import Table
    from rich.text import Text

    if not rows:
        console.print(Text(f"{title}: {empty}"))
        return
    table = Table(title=Text(title, style="table.title"))
    for index, name in enumerate(columns):
        table.add_column(name, justify="left" if index < _text_columns(columns) else "right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


def _text_columns(columns: Sequence[str]) -> int:
    return next((i for i, name in enumerate(columns) if name in ("calls", "streams", "users", "ratio", "rule calls")),
                len(columns))  # fmt: skip


def _money(spent: Spend) -> str:
    from tokenmeter.waste.renderings import money_lines

    return money_lines(spent.costs, spent.unpriced_calls)


def _tokens(spent: Spend) -> str:
    return f"{spent.input_tokens:,} / {spent.output_tokens:,}"


def repeated_prompts(report: WasteReport, console: Console) -> None:
    rows = [
        (r.prompt_hash[:16], r.app, r.model, f"{r.spend.calls:,}", f"{r.users:,}", _tokens(r.spend), _money(r.spend))
        for r in report.repeated_prompts
    ]
    _table(console, "Repeated prompts (by prompt hash; calls x cost)", ("prompt hash", "app", "model", "calls", "users",
           "tokens (in / out)", "cost"), rows, "no prompt hash seen twice")  # fmt: skip


def heavy_users(report: WasteReport, console: Console) -> None:
    query = report.query
    rows = [(h.user, h.department, f"{h.calls:,}", f"{h.input_tokens_per_call:,.0f}",
             f"{h.department_input_tokens_per_call:,.0f}", f"{h.ratio:.1f}x") for h in report.heavy_users]  # fmt: skip
    _table(console, f"Long inputs (users at {query.heavy_factor:g}x their department's input per call or more, "
           f"{query.heavy_min_calls}+ calls)", ("user", "department", "calls", "input / call",
           "department input / call", "ratio"), rows, "none")  # fmt: skip


def context(report: WasteReport, console: Console) -> None:
    rows = [(c.app, c.app_route or "–", f"{c.calls:,}", f"{c.context_share:.0%}", f"{c.input_tokens:,}")
            for c in report.context]  # fmt: skip
    _table(console, "Context share of input (1 - question / prompt characters)", ("app", "app route", "calls",
           "context share", "input tokens"), rows, "no calls recorded prompt and question lengths")  # fmt: skip


def incomplete_streams(report: WasteReport, console: Console) -> None:
    rows = [(s.app, s.user, f"{s.streams:,}", f"{s.incomplete.calls:,}", _tokens(s.incomplete), _money(s.incomplete))
            for s in report.incomplete_streams]  # fmt: skip
    total = report.incomplete_total
    rows += [("all", "", "", f"{total.calls:,}", _tokens(total), _money(total))] if rows else []
    _table(console, "Streams not read to the end", ("app", "user", "streams", "not read to the end",
           "tokens (in / out)", "cost"), rows, "none")  # fmt: skip


def retries(report: WasteReport, console: Console) -> None:
    rows = [(t.app, t.user, f"{t.repeats.calls:,}", _tokens(t.repeats), _money(t.repeats)) for t in report.retries]
    total = report.retries_total
    rows += [("all", "", f"{total.calls:,}", _tokens(total), _money(total))] if rows else []
    _table(console, f"Retries (the same user and prompt hash again within {report.query.retry_window} s)",
           ("app", "user", "calls", "tokens (in / out)", "cost"), rows, "none")  # fmt: skip


def cache(report: WasteReport, console: Console) -> None:
    lines = [*report.cache, report.cache_total] if report.cache else []
    rows = [(m.model or "all", f"{m.calls:,}", f"{m.hits.calls:,}", f"{m.hit_rate:.0%}", _tokens(m.hits),
             _money(m.hits), f"{m.calls_without_hash:,}") for m in lines]  # fmt: skip
    _table(
        console,
        f"Cache replay (by prompt hash and model, TTL {report.query.cache_ttl} s): saved",
        ("model", "calls", "hits", "hit rate", "tokens (in / out)", "cost", "calls without hash"),
        rows,
        "no calls",
    )
    hits = report.cache_hits
    if hits.calls:
        console.print(f"The answer cache answered {hits.calls:,} calls, saving {hits.saved_input_tokens:,} / "
                      f"{hits.saved_output_tokens:,} tokens and {_money(Spend(costs=hits.saved_costs))}.")  # fmt: skip


def routing(report: WasteReport, console: Console) -> None:
    replay = report.routing
    if replay is None:
        console.print(f"Routing replay: {report.routing_note or 'no policy with a routing section'}")
        return
    rows = [(r.rule, r.target, f"{r.matched:,}", f"{r.moved:,}", _money(Spend(costs=r.before)),
             _money(Spend(costs=r.after)), _money(Spend(costs=r.saved, unpriced_calls=r.unpriced_moved)))
            for r in replay.rules]  # fmt: skip
    _table(
        console,
        f"Routing replay of {replay.policy} ({replay.calls:,} chat calls, {replay.calls_with_intent:,} with "
        f"an intent; not replayed: {replay.calls_without_features:,} without features, "
        f"{replay.calls_in_experiments:,} in experiments)",
        ("rule", "target", "rule calls", "moved", "cost before", "cost after", "saved"),
        rows,
        "the policy has no rules",
    )


SECTIONS: Final[tuple[Callable[[WasteReport, Console], None], ...]] = (
    repeated_prompts, heavy_users, context, incomplete_streams, retries, cache, routing,
)  # fmt: skip
