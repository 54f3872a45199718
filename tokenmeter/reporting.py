"""Usage reports: one period, grouped by department, user, model or app.

Pure parts (periods, the report document, its three renderings) are used both by
`tokenmeter report` and by `tokenmeter serve`'s ``GET /v1/report``; the numbers come from
:func:`tokenmeter.store.usage_queries.period_usage` (the exact counter rule). Cost per conversation
(``by="conversation"``) comes from the per-call rows instead, since the counters carry no conversation
(:mod:`tokenmeter.store.conversation_queries`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from tokenmeter.calendar_periods import calendar_period, midnight
from tokenmeter.store.conversation_queries import DEFAULT_LIMIT, ConversationCosts, conversation_costs
from tokenmeter.store.usage_queries import CostAmount, Dimension, PeriodUsage, period_usage

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client
    from rich.console import Console

Period = Literal["day", "week", "month", "year"]
DIMENSIONS: Final[tuple[str, ...]] = ("department", "user", "model", "app")
CONVERSATION: Final = "conversation"  # cost per conversation: from llm_usage, not the counters
NONE_LABEL: Final = "(none)"  # calls nobody was attributed to
_DISPLAY_DECIMALS: Final = Decimal("0.000001")
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
ROW_ORDER: Final = "rows: most tokens first (input + output), then most calls sent"


def resolve_period(period: str, at: date | None = None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC of the calendar day, ISO week (Monday first) or month holding ``at`` (default today)."""
    day = at or (now or datetime.now(UTC)).astimezone(UTC).date()
    first, last = calendar_period(period, day)
    return midnight(first, UTC), midnight(last, UTC)


def parse_day(text: str | None) -> date | None:
    """``--at`` / ``?at=``: a YYYY-MM-DD day, or None for today."""
    if not text:
        return None
    try:
        if not _DAY.fullmatch(text):  # fromisoformat alone also takes 20261128 and 2026-W48-6
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"at: {text!r} is not a date; use YYYY-MM-DD, e.g. 2026-11-28") from None


def period_label(period: str, start: datetime) -> str:
    if period == "day":
        return start.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "year":
        return start.strftime("%Y")
    return start.strftime("%Y-%m")


@dataclass(frozen=True)
class ReportRow:
    subject: str
    calls: int  # sent to a model
    input_tokens: int
    output_tokens: int
    costs: tuple[CostAmount, ...] = ()
    unpriced_calls: int = 0
    refused_calls: int = 0  # refused by a quota before the request: never sent

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class UsageReport:
    by: str
    period: str
    start: datetime
    end: datetime
    rows: tuple[ReportRow, ...] = field(default_factory=tuple)
    subject: str | None = None

    @property
    def label(self) -> str:
        return period_label(self.period, self.start)

    @property
    def totals(self) -> ReportRow:
        costs: dict[tuple[str, bool], Decimal] = {}
        for row in self.rows:
            for cost in row.costs:
                key = (cost.currency, cost.virtual)
                costs[key] = costs.get(key, Decimal(0)) + cost.amount
        return ReportRow(
            subject="total",
            calls=sum(row.calls for row in self.rows),
            input_tokens=sum(row.input_tokens for row in self.rows),
            output_tokens=sum(row.output_tokens for row in self.rows),
            costs=tuple(CostAmount(currency, virtual, amount) for (currency, virtual), amount in sorted(costs.items())),
            unpriced_calls=sum(row.unpriced_calls for row in self.rows),
            refused_calls=sum(row.refused_calls for row in self.rows),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (`--format json`, ``GET /v1/report``); amounts are decimal strings."""
        return {
            "by": self.by,
            "period": self.period,
            "label": self.label,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "subject": self.subject,
            "rows": [_row_dict(row) for row in self.rows],
            "totals": _row_dict(self.totals),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> UsageReport:
        """The inverse of ``to_dict``; ValueError when ``document`` is not a usage report."""
        try:
            return cls(
                by=str(document["by"]),
                period=str(document["period"]),
                start=datetime.fromisoformat(document["start"]),
                end=datetime.fromisoformat(document["end"]),
                rows=tuple(_row_from_dict(row) for row in document["rows"]),
                subject=document.get("subject"),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:  # decimal.InvalidOperation is one
            raise ValueError(f"not a usage report document ({type(exc).__name__}: {exc})") from None


def _row_dict(row: ReportRow) -> dict[str, Any]:
    return {
        "subject": row.subject,
        "calls": row.calls,
        "refused_calls": row.refused_calls,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "costs": [{"currency": c.currency, "virtual": c.virtual, "amount": _decimal_text(c.amount)} for c in row.costs],
        "unpriced_calls": row.unpriced_calls,
    }


def _row_from_dict(row: dict[str, Any]) -> ReportRow:
    return ReportRow(
        subject=str(row["subject"]),
        calls=int(row["calls"]),
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        costs=tuple(CostAmount(str(c["currency"]), bool(c["virtual"]), _amount(c["amount"])) for c in row["costs"]),
        unpriced_calls=int(row["unpriced_calls"]),
        refused_calls=int(row["refused_calls"]),
    )


def _decimal_text(amount: Decimal) -> str:
    """Plain digits, never an exponent: 0.0000006, not 6E-7 (str() of a Decimal below 1e-6)."""
    return format(amount, "f")


def _amount(text: object) -> Decimal:
    if not isinstance(text, str):  # a JSON number would have passed through float
        raise TypeError(f"amount must be a decimal string, got {text!r}")
    return Decimal(text)


def _report_row(usage: PeriodUsage) -> ReportRow:
    return ReportRow(
        subject=usage.subject or NONE_LABEL,
        calls=usage.calls,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        costs=tuple(usage.costs),
        unpriced_calls=usage.unpriced_calls,
        refused_calls=usage.refused_calls,
    )


def _sorted_rows(rows: list[ReportRow]) -> tuple[ReportRow, ...]:
    """Most tokens (input + output) first, then most calls sent, then by name (:data:`ROW_ORDER`).

    Tokens, not cost: a report holds several currencies (and virtual prices) that are never
    converted into each other, so no cost ranks every row; tokens are one unit everywhere."""
    return tuple(sorted(rows, key=lambda row: (-row.tokens, -row.calls, row.subject)))


def build_usage_report(
    client: Client, by: str, period: str, at: date | None = None, subject: str | None = None, *,
    now: datetime | None = None, limit: int = DEFAULT_LIMIT,
) -> UsageReport | ConversationCosts:  # fmt: skip
    """The report for one period from the store (``limit``: the conversation report's costliest per currency);
    raises ValueError for a bad ``by`` or ``period``."""
    if by == CONVERSATION:
        return build_conversation_report(client, period, at, subject, now=now, limit=limit)
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}, got {by!r}")
    start, end = resolve_period(period, at, now)
    usage = period_usage(client, start, end, cast("Dimension", by), subject, with_unpriced=True)
    rows = _sorted_rows([_report_row(entry) for entry in usage])
    return UsageReport(by=by, period=period, start=start, end=end, rows=rows, subject=subject)


def build_conversation_report(
    client: Client, period: str, at: date | None = None, conversation: str | None = None, *,
    limit: int = DEFAULT_LIMIT, now: datetime | None = None,
) -> ConversationCosts:  # fmt: skip
    """Cost per conversation in one period (its ``limit`` costliest per currency), or of one conversation."""
    start, end = resolve_period(period, at, now)
    return conversation_costs(client, period, start, end, conversation=conversation, limit=limit)


# --- renderings ------------------------------------------------------------------


def format_cost(cost: CostAmount) -> str:
    amount = cost.amount.quantize(_DISPLAY_DECIMALS).normalize()
    text = f"{amount:f} {cost.currency}"
    return f"{text} (virtual)" if cost.virtual else text


def render_json(report: UsageReport) -> str:
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"


def render_csv(report: UsageReport) -> str:
    """One line per subject and currency; a subject without cost has one line with empty cost columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([report.by, "period", "calls", "refused_calls", "input_tokens", "output_tokens", "cost",
                     "currency", "virtual", "unpriced_calls"])  # fmt: skip
    for row in report.rows:
        lines = [(_decimal_text(c.amount), c.currency, str(c.virtual).lower()) for c in row.costs] or [("", "", "")]
        for amount, currency, virtual in lines:
            writer.writerow([row.subject, report.label, row.calls, row.refused_calls, row.input_tokens,
                             row.output_tokens, amount, currency, virtual, row.unpriced_calls])  # fmt: skip
    return buffer.getvalue()


def report_title(report: UsageReport, now: datetime | None = None) -> str:
    """E.g. "Usage by department, 2026-11 (month to date, UTC)"; "to date" while the period is running."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    running = report.start <= moment < report.end
    span = ("today so far" if report.period == "day" else f"{report.period} to date") if running else report.period
    what = f" for {report.subject or NONE_LABEL}" if report.subject is not None else ""
    return f"Usage by {report.by}{what}, {report.label} ({span}, UTC)"


def render_table(report: UsageReport, console: Console, store: str = "", now: datetime | None = None) -> None:
    """A rich table: one cost line per (currency, virtual) in the cell, totals in the footer."""
    from rich.table import Table
    from rich.text import Text

    # Subjects are whatever the app sent: as Text, "[red]" in a user id is not rich markup.
    title = report_title(report, now)
    if not report.rows:
        console.print(Text(f"{title}: no usage recorded." + (f" ({store})" if store else "")))
        return
    totals = report.totals
    table = Table(title=Text(title, style="table.title"), caption=Text(store, style="table.caption") if store else None,
                  show_footer=True)  # fmt: skip
    table.add_column(report.by, footer="total")
    for name, value in (("calls sent", totals.calls), ("calls refused", totals.refused_calls),
                        ("input tokens", totals.input_tokens), ("output tokens", totals.output_tokens)):  # fmt: skip
        table.add_column(name, justify="right", footer=f"{value:,}")
    table.add_column("cost", justify="right", footer="\n".join(format_cost(c) for c in totals.costs) or "–")
    table.add_column("unpriced calls", justify="right", footer=f"{totals.unpriced_calls:,}")
    for row in report.rows:
        table.add_row(
            Text(row.subject), f"{row.calls:,}", f"{row.refused_calls:,}" if row.refused_calls else "",
            f"{row.input_tokens:,}", f"{row.output_tokens:,}",
            "\n".join(format_cost(c) for c in row.costs) or "–",
            f"{row.unpriced_calls:,}" if row.unpriced_calls else "",
        )  # fmt: skip
    console.print(table)
    console.print(f"{ROW_ORDER}.")
    if totals.refused_calls:
        console.print("calls refused: stopped by a quota before the request (deny, degrade); never sent.")
    if any(cost.virtual for cost in totals.costs):
        console.print("(virtual) = an internal price for a local model, not an invoice amount.")
    if totals.unpriced_calls:
        console.print("unpriced calls: models without a price in the catalog; their cost is not in the totals.")
