"""A monthly statement rendered: JSON, one CSV file and a printable, self-contained HTML page.

The CSV is one table (:data:`CSV_COLUMNS`); a ``record`` column says what a line is. docs/credits.md
("Monthly statements") describes every column.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

from tokenmeter.credits.statement import ZERO, Statement, UsageLine, WalletStatement, decimal_text, wallet_amounts


def render_json(statement: Statement) -> str:
    return json.dumps(statement.to_dict(), ensure_ascii=False, indent=2) + "\n"


# --- CSV: one file, one table; ``record`` says what a line is -----------------------------------------

CSV_COLUMNS: Final = ("record", "department", "month", "wallet", "unit", "user", "model", "calls", "refused_calls",
                      "input_tokens", "output_tokens", "currency", "real_cost", "virtual_cost", "credits", "item",
                      "amount", "at", "actor", "note", "entry_id")  # fmt: skip


def render_csv(statement: Statement) -> str:
    """The statement as one CSV table (:data:`CSV_COLUMNS`): ``statement`` lines (time zone, start, end, when made),
    then per wallet (once, with an empty wallet, when there is none) its ``usage`` lines, ``total`` lines, ``ledger``
    figures, ``top_up`` and ``adjustment`` entries and the ``check`` line; ``no_wallet`` when there is none."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in _csv_records(statement):
        writer.writerow([record.get(column, "") for column in CSV_COLUMNS])
    return buffer.getvalue()


def _csv_records(statement: Statement) -> Iterable[dict[str, object]]:
    head = {"department": statement.department, "month": statement.month.label}
    yield {**head, "record": "statement", "item": "time_zone", "note": statement.time_zone}
    for item, moment in (("start", statement.month.start), ("end", statement.month.end),
                         ("generated_at", statement.generated_at)):  # fmt: skip
        yield {**head, "record": "statement", "item": item, "at": moment.isoformat()}
    for wallet in statement.wallets or (None,):
        on = {**head, "wallet": wallet.name, "unit": wallet.unit} if wallet else head
        for line in statement.lines:
            yield from _usage_records("usage", line, on, wallet)
        yield from _usage_records("total", statement.totals, on, wallet)
        if wallet is None:
            yield {**head, "record": "no_wallet", "note": no_wallet_note(statement)}
            continue
        for item, amount in wallet_amounts(wallet):
            yield {**on, "record": "ledger", "item": item, "amount": decimal_text(amount)}
        for entry in wallet.added:
            yield {**on, "record": entry.kind, "amount": decimal_text(entry.amount), "at": entry.at.isoformat(),
                   "actor": entry.actor, "note": entry.reason, "entry_id": entry.entry_id}  # fmt: skip
        yield {**on, "record": "check", "item": "charges_match_usage", "amount": decimal_text(wallet.not_yet_charged),
               "note": check_note(wallet)}  # fmt: skip


def _usage_records(record: str, line: UsageLine, on: dict[str, object],
                   wallet: WalletStatement | None) -> Iterable[dict[str, object]]:  # fmt: skip
    """A line per currency of the line's costs (one without cost: empty currency); calls and tokens on the first
    only, and the line's credits too (the wallet converts every currency into its one unit), so that summing a
    column never counts anything twice."""
    currencies = list(dict.fromkeys(cost.currency for cost in line.costs)) or [""]
    for index, currency in enumerate(currencies):
        real = sum((c.amount for c in line.costs if c.currency == currency and not c.virtual), ZERO)
        virtual = sum((c.amount for c in line.costs if c.currency == currency and c.virtual), ZERO)
        counts = (line.calls, line.refused_calls, line.input_tokens, line.output_tokens) if index == 0 else ("",) * 4
        has = {c.virtual for c in line.costs if c.currency == currency}
        yield {**on, "record": record, "user": line.user, "model": line.model,
               **dict(zip(("calls", "refused_calls", "input_tokens", "output_tokens"), counts, strict=True)),
               "currency": currency, "real_cost": decimal_text(real) if False in has else "",
               "virtual_cost": decimal_text(virtual) if True in has else "",
               "credits": _credits_text(line, wallet, index)}  # fmt: skip


def _credits_text(line: UsageLine, wallet: WalletStatement | None, index: int) -> str:
    """The line's credits in the wallet, on its first line (a wallet converts all its currencies into one unit)."""
    if wallet is None or index:
        return ""
    return decimal_text(line.credits[wallet.name])


def no_wallet_note(statement: Statement) -> str:
    return (f"the policy gives department {statement.department!r} no wallet: the statement shows its usage, "
            "and no credits")  # fmt: skip


def check_note(wallet: WalletStatement) -> str:
    if wallet.not_yet_charged == 0:
        return "the ledger's charges for the month equal its usage's credits"
    if wallet.not_yet_charged > 0:
        return (f"{decimal_text(wallet.not_yet_charged)} {wallet.unit} of the month's usage are not charged yet "
                "(usage that arrived after its day was charged, or a day not closed yet)")  # fmt: skip
    return (f"the ledger charged {decimal_text(-wallet.not_yet_charged)} {wallet.unit} more than the month's "
            "usage costs")  # fmt: skip


# --- HTML: a printable page, self-contained (inline CSS, no scripts, no external assets) -----------------

_LABELS: Final = {
    "usage_credits": "the month's usage costs",
    "charged_in_month": "charged for the month's days",
    "not_yet_charged": "usage not charged yet",
    "yearly_grant_in_month": "yearly grant recorded in the month",
    "top_ups_in_month": "top-ups in the month",
    "adjustments_in_month": "adjustments in the month",
    "granted_in_month": "credits added in the month",
    "granted_year_to_date": "credits added, year to date",
    "balance_at_month_end": "balance at the month's end",
}
_STYLE: Final = """
body { font-family: "Noto Sans CJK SC", "Helvetica Neue", Arial, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } th, td { border: 1px solid #999; padding: 0.25em 0.6em; }
th { background: #eee; text-align: left; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.n { white-space: nowrap; }
tfoot td { font-weight: bold; } .ok { color: #185c18; } .differ { color: #8a1c1c; font-weight: bold; }
.muted { color: #555; font-size: 0.9em; }
@media print { body { margin: 0; } h2 { break-after: avoid; } tr { break-inside: avoid; }
  th { background: none; } @page { margin: 1.5cm; } }
"""


def render_html(statement: Statement) -> str:
    """The statement as a printable HTML page; every name and reason from users is escaped."""
    e = html.escape
    month = statement.month
    title = f"AI credits statement: {statement.department}, {month.label}"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n"
        f'<p class="muted">Department <strong>{e(statement.department)}</strong>, month {e(month.label)} in '
        f"{e(statement.time_zone)}: from {e(_moment(month.start))} to {e(_moment(month.end))} (exclusive). "
        f"Made at {e(_moment(statement.generated_at))}.</p>\n"
    ]
    if not statement.wallets:
        parts.append(f'<p class="differ">{e(no_wallet_note(statement).capitalize())}.</p>\n')
    parts.extend(_wallet_html(wallet) for wallet in statement.wallets)
    parts.append(_usage_html(statement))
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _moment(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %z")


def _wallet_html(wallet: WalletStatement) -> str:
    e = html.escape
    figures = "".join(f'<tr><th>{e(_LABELS[name])}</th><td class="n">{e(decimal_text(amount))}</td></tr>\n'
                      for name, amount in wallet_amounts(wallet))  # fmt: skip
    verdict = "ok" if wallet.not_yet_charged == 0 else "differ"
    parts = [
        f'<h2>Wallet {e(wallet.name)} <span class="muted">(ledger account {e(wallet.account)}, in '
        f"{e(wallet.unit)})</span></h2>\n<table>\n{figures}</table>\n"
        f'<p class="{verdict}">Check: {e(check_note(wallet))}.</p>\n<h3>Top-ups and adjustments in the month</h3>\n'
    ]
    if not wallet.added:
        parts.append('<p class="muted">None.</p>\n')
        return "".join(parts)
    parts.append("<table>\n<thead><tr><th>when</th><th>kind</th><th class=\"n\">amount</th><th>approved / made by</th>"
                 "<th>reason</th><th>entry</th></tr></thead>\n<tbody>\n")  # fmt: skip
    for entry in wallet.added:
        parts.append(f"<tr><td>{e(_moment(entry.at))}</td><td>{e(entry.kind.replace('_', '-'))}</td>"
                     f'<td class="n">{e(decimal_text(entry.amount))}</td><td>{e(entry.actor)}</td>'
                     f"<td>{e(entry.reason)}</td><td>{e(entry.entry_id)}</td></tr>\n")  # fmt: skip
    parts.append("</tbody>\n</table>\n")
    return "".join(parts)


def _usage_html(statement: Statement) -> str:
    e = html.escape
    wallets = [wallet.name for wallet in statement.wallets]
    head = "".join(f'<th class="n">{e(name)}</th>' for name in ("calls sent", "calls refused", "input tokens",
                                                                "output tokens", "cost", "virtual cost"))  # fmt: skip
    head += "".join(f'<th class="n">credits ({e(name)})</th>' for name in wallets)
    parts = [f"<h2>Usage by user and model</h2>\n<table>\n<thead><tr><th>user</th><th>model</th>{head}</tr></thead>\n"
             "<tbody>\n"]  # fmt: skip
    for line in statement.lines:
        parts.append(f"<tr><td>{e(line.user or '(none)')}</td><td>{e(line.model or '(none)')}</td>"
                     f"{_usage_cells(line, wallets)}</tr>\n")  # fmt: skip
    if not statement.lines:
        parts.append(f'<tr><td colspan="{8 + len(wallets)}" class="muted">No usage recorded.</td></tr>\n')
    parts.append(f'</tbody>\n<tfoot><tr><td colspan="2">total</td>{_usage_cells(statement.totals, wallets)}</tr>'
                 "</tfoot>\n</table>\n<p class=\"muted\">Calls refused were stopped by a quota before the request: "
                 "never sent, never charged. A virtual cost is an internal price for a local model, not an invoice "
                 "amount; a wallet converts it into credits unless it does not charge virtual prices. Usage with no "
                 "cost is of models the price catalog does not price.</p>\n")  # fmt: skip
    return "".join(parts)


def _usage_cells(line: UsageLine, wallets: Sequence[str]) -> str:
    e = html.escape

    def costs(virtual: bool) -> str:
        return "<br>".join(f"{decimal_text(c.amount)} {e(c.currency)}" for c in line.costs if c.virtual == virtual)

    numbers = [f"{line.calls:,}", f"{line.refused_calls:,}", f"{line.input_tokens:,}", f"{line.output_tokens:,}"]
    cells = [*(e(number) for number in numbers), costs(False) or "–", costs(True) or "–",
             *(e(decimal_text(line.credits[name])) for name in wallets)]  # fmt: skip
    return "".join(f'<td class="n">{cell}</td>' for cell in cells)
