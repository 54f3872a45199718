"""The comparison as JSON, CSV (the per-model table) and a rich table followed by the pair sentences."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Final

from tokenmeter.comparison.answer_rows import CostTotal, ModelFigures, decimal_text
from tokenmeter.comparison.money_text import money_text, plain

if TYPE_CHECKING:
    from rich.console import Console

    from tokenmeter.comparison.model_comparison import Comparison

CSV_COLUMNS: Final = (
    "app", "experiment", "arm", "model", "period", "answers", "rated_answers", "mean_rating", "rating_ci_low",
    "rating_ci_high", "input_tokens_per_answer", "output_tokens_per_answer", "cost_per_answer", "currency", "virtual",
    "cost_per_rating_point", "unpriced_answers",
)  # fmt: skip


def render_json(comparison: Comparison) -> str:
    return json.dumps(comparison.to_dict(), ensure_ascii=False, indent=2) + "\n"


def render_csv(comparison: Comparison) -> str:
    """One line per row and currency of its cost per answer; a row without cost has one line with those empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for figures in comparison.figures:
        row, interval = figures.row, figures.rating_interval
        per_point = {(c.currency, c.virtual): c.amount for c in figures.cost_per_rating_point}
        costs = [(decimal_text(c.amount), c.currency, str(c.virtual).lower(), per_point.get((c.currency, c.virtual)))
                 for c in figures.cost_per_answer] or [("", "", "", None)]  # fmt: skip
        for amount, currency, virtual, point in costs:
            writer.writerow([
                row.app, row.experiment, row.arm, row.model, comparison.period.label, row.answers, row.rated_answers,
                _number(figures.mean_rating), _number(interval.low if interval else None),
                _number(interval.high if interval else None), _number(figures.input_tokens_per_answer),
                _number(figures.output_tokens_per_answer), amount, currency, virtual,
                decimal_text(point) if point is not None else "", row.unpriced_answers,
            ])  # fmt: skip
    return buffer.getvalue()


def _number(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def comparison_title(comparison: Comparison) -> str:
    """E.g. "Models by cost and rating, 2026-11 (UTC), app kb-assistant, experiment qwen-vs-baichuan"."""
    filters = comparison.filters
    parts = [f"Models by cost and rating, {comparison.period.label} ({comparison.period.timezone})"]
    parts += [f"app {filters.app}"] * bool(filters.app) + [f"experiment {filters.experiment}"] * bool(
        filters.experiment
    )
    return ", ".join(parts)


def rating_text(figures: ModelFigures) -> str:
    """``82.4 (78.1 .. 86.7)``, ``82.0 (1 rating)`` or ``–``."""
    mean, interval = figures.mean_rating, figures.rating_interval
    if mean is None:
        return "–"
    if interval is None:
        return f"{plain(mean)} (1 rating)"
    return f"{plain(mean)} ({plain(interval.low)} .. {plain(interval.high)})"


def _money_lines(costs: tuple[CostTotal, ...]) -> str:
    return "\n".join(money_text(c.amount, c.currency) + (" (virtual)" if c.virtual else "") for c in costs) or "–"


def render_table(comparison: Comparison, console: Console, store: str = "") -> None:
    """The table, then one line per pair finding, then what the marks mean."""
    from rich.table import Table
    from rich.text import Text

    title = comparison_title(comparison)
    if not comparison.figures:
        console.print(Text(f"{title}: no chat calls recorded." + (f" ({store})" if store else "")))
        return
    table = Table(title=Text(title, style="table.title"), caption=Text(store, style="table.caption") if store else None)
    for name in ("app", "model", "answers", "rated", "mean rating (95 % CI)", "tokens / answer (in / out)",
                 "cost / answer", "cost / rating point", "unpriced answers"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("app", "model") else "right")
    for figures in comparison.figures:
        row = figures.row
        tokens = f"{figures.input_tokens_per_answer or 0:,.0f} / {figures.output_tokens_per_answer or 0:,.0f}"
        table.add_row(Text(row.app), Text(f"{row.model} ({row.arm})" if row.arm else row.model), f"{row.answers:,}",
                      f"{row.rated_answers:,}", rating_text(figures), tokens, _money_lines(figures.cost_per_answer),
                      _money_lines(figures.cost_per_rating_point),
                      f"{row.unpriced_answers:,}" if row.unpriced_answers else "")  # fmt: skip
    console.print(table)
    for finding in comparison.findings:
        console.print(Text(f"- {finding.sentence}"))
    _notes(comparison, console)


def _notes(comparison: Comparison, console: Console) -> None:
    console.print(
        f"ratings 0-100; a pair needs at least {comparison.min_ratings} rated answers on each side; "
        f"similar quality: the difference's 95 % interval lies within ±{comparison.margin:g} points."
    )
    if any(c.virtual for f in comparison.figures for c in f.cost_per_answer):
        console.print("(virtual) = an internal price for a local model, not an invoice amount.")
    if any(f.row.unpriced_answers for f in comparison.figures):
        console.print("unpriced answers: with a call whose model has no price in the catalog; its cost is unknown, "
                      "never 0, and not in the cost per answer.")  # fmt: skip
