"""The reconciliation as JSON (exact decimals as strings) and as rich tables: the differences on the days and
models both sides have, what only the provider billed, what only tokenmeter saw, and the month totals."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tokenmeter.reconcile.comparison import DayModelRow, Reconciliation
from tokenmeter.reconcile.token_types import COMPARED

if TYPE_CHECKING:
    from rich.console import Console


def decimal_text(value: Decimal) -> str:
    """Exact, without exponent or trailing zeros: ``1500``, ``0.0115``, ``-0.000001``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def shown(values: dict[str, Decimal], compared: tuple[str, ...]) -> dict[str, Decimal]:
    """A side's values in report order: the compared types, and the others where not 0."""
    return {t: values.get(t, Decimal(0)) for t in COMPARED if (t in compared and t in values) or values.get(t)}


def _values(values: dict[str, Decimal]) -> dict[str, str]:
    return {token_type: decimal_text(amount) for token_type, amount in values.items()}


def _side_dict(row: DayModelRow, compared: tuple[str, ...]) -> dict[str, Any]:
    side = row.provider or row.tokenmeter
    assert side is not None
    found: dict[str, Any] = {
        "day": row.day.isoformat(),
        "model": row.model_key,
        "models": sorted(side.models),
        "values": _values(shown(side.values, compared)),
    }
    if row.provider:
        found["split"] = [
            {"workspace": workspace, "api_key": key, "values": _values(values)}
            for (workspace, key), values in sorted(row.provider.split.items())
        ]
    if row.tokenmeter:
        found["unpriced_calls"] = row.tokenmeter.unpriced_calls
    return found


def to_dict(reconciliation: Reconciliation) -> dict[str, Any]:
    r = reconciliation
    differences = [
        {
            "day": row.day.isoformat(),
            "model": row.model_key,
            "type": d.token_type,
            "tokenmeter": decimal_text(d.tokenmeter),
            "provider": decimal_text(d.provider),
            "difference": decimal_text(d.difference),
        }
        for row in r.differing
        for d in row.differences
    ]
    months = [
        {
            "month": t.month,
            "type": t.token_type,
            "tokenmeter": decimal_text(t.tokenmeter),
            "provider": decimal_text(t.provider),
            "difference": decimal_text(t.tokenmeter - t.provider),
            "relative": None if t.relative is None else decimal_text(t.relative),
            "past_threshold": t.past_threshold,
        }
        for t in r.totals
    ]
    return {
        "provider": r.provider,
        "period": {"from": r.period.first.isoformat(), "to": r.period.last.isoformat(), "zone": r.period.zone},
        "currency": r.currency,
        "threshold_percent": decimal_text(r.threshold),
        "compared": list(r.compared),
        "not_compared": list(r.not_compared),
        "differences": differences,
        "provider_only": [_side_dict(row, r.compared) for row in r.of_kind("provider only")],
        "tokenmeter_only": [_side_dict(row, r.compared) for row in r.of_kind("tokenmeter only")],
        "months": months,
        "past_threshold": bool(r.past_threshold),
        "notes": list(r.notes),
    }


def render_json(reconciliation: Reconciliation) -> str:
    return json.dumps(to_dict(reconciliation), ensure_ascii=False, indent=2) + "\n"


def _summary(values: dict[str, Decimal]) -> str:
    return ", ".join(f"{token_type} {decimal_text(amount)}" for token_type, amount in values.items()) or "–"


def render_table(reconciliation: Reconciliation, console: Console) -> None:
    from rich.table import Table

    r = reconciliation
    console.print(
        f"[bold]{r.provider}[/bold]: tokenmeter against the provider's export, {r.period.label}; "
        f"cost in {r.currency or '(no cost in the export)'}"
    )
    table = Table("day", "model", "type", "tokenmeter", "invoice", "difference", title="Differences (both sides)")
    for row in r.differing:
        for d in row.differences:
            sign = "tokenmeter more" if d.difference > 0 else "invoice more"
            table.add_row(
                str(row.day),
                row.model_key,
                d.token_type,
                decimal_text(d.tokenmeter),
                decimal_text(d.provider),
                f"{decimal_text(d.difference)} ({sign})",
            )
    console.print(table if r.differing else "Differences (both sides): none")
    for kind, title in (
        ("provider only", "Billed by the provider, no call in tokenmeter"),
        ("tokenmeter only", "Calls tokenmeter saw, not billed by the provider"),
    ):
        rows = r.of_kind(kind)
        if not rows:
            console.print(f"{title}: none")
            continue
        only = Table("day", "model", "as named", "values", title=title)
        for row in rows:
            side = row.provider or row.tokenmeter
            assert side is not None
            only.add_row(
                str(row.day), row.model_key, ", ".join(sorted(side.models)), _summary(shown(side.values, r.compared))
            )
        console.print(only)
    _render_totals(r, console)


def _render_totals(r: Reconciliation, console: Console) -> None:
    from rich.table import Table

    totals = Table(
        "month",
        "type",
        "tokenmeter",
        "invoice",
        "difference",
        "relative",
        "",
        title=f"Month totals (threshold {decimal_text(r.threshold)} %)",
    )
    for t in r.totals:
        relative = "–" if t.relative is None else f"{decimal_text((t.relative * 100).quantize(Decimal('0.0001')))} %"
        totals.add_row(
            t.month,
            t.token_type,
            decimal_text(t.tokenmeter),
            decimal_text(t.provider),
            decimal_text(t.tokenmeter - t.provider),
            relative,
            "PAST" if t.past_threshold else "ok",
        )
    console.print(totals)
    if r.not_compared:
        console.print(f"Not in the export, not compared: {', '.join(r.not_compared)}")
    for note in r.notes:
        console.print(f"Note: {note}")
