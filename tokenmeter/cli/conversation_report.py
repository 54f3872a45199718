"""`tokenmeter report --by conversation`: cost per conversation in a period, costliest first (docs/accounting.md).

The numbers come from the per-call rows (llm_usage), not from the usage counters the other ``--by`` read: the
counters carry no conversation id. So with trace sampling on, they are the sampled calls only; the output says
so. From the store directly, or a running serve's ``GET /v1/report?by=conversation`` (as `report`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TextIO

from tokenmeter.cli.api_tokens import TokenFileError
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.report import ReportError, ServeApi
from tokenmeter.cli.store_or_serve import answered_by, get_from_serve, query_error_line, read_store_or_serve
from tokenmeter.reporting import CONVERSATION, NONE_LABEL, build_conversation_report, parse_day, period_label
from tokenmeter.store.conversation_queries import DEFAULT_LIMIT, ConversationCosts, ConversationRow, CostSection

if TYPE_CHECKING:
    from rich.console import Console

    from tokenmeter.store.client import StoreLocation

SOURCE_NOTE: Final = (
    "From the per-call spans (llm_usage), the only record with the conversation id: calls in sampled-out traces "
    "are not here. Usage by department, user, model or app comes from the usage counters, which see every call."
)
RANKING_NOTE: Final = "Ranked by cost within each currency (currencies are never added up); without a price: by tokens."


def add_conversation_options(report: argparse.ArgumentParser) -> None:
    report.add_argument("--limit", metavar="N", help=f"with --by {CONVERSATION}: the N costliest conversations per "
                        f"currency (default {DEFAULT_LIMIT})")  # fmt: skip


def run_conversation_report(args: argparse.Namespace, stdout: TextIO) -> int:
    """Print cost per conversation; 0 ok, 1 the store or API could not answer, 2 bad input."""
    try:
        question = Question(args.period or "month", parse_day(args.at), args.subject, _limit(args.limit))
        report, answerer, caption = read_store_or_serve(
            "report", args.clickhouse_url, args.api,
            lambda client, location: (_from_store(client, location, question), f"the store {location.display}",
                                      location.display),
            lambda api: _from_api(api, question),
        )  # fmt: skip
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (ReportError, TokenFileError) as exc:
        return _fail(str(exc), getattr(exc, "exit_code", EXIT_UNAVAILABLE))
    sys.stderr.write(f"tokenmeter report: answered by {answerer}\n")
    if args.format == "json":
        stdout.write(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    elif args.format == "csv":
        stdout.write(render_csv(report))
    else:
        render_table(report, output_console(stdout), store=caption)
    return EXIT_OK


@dataclass(frozen=True)
class Question:
    """What the report is asked for: a period (holding the day ``at``), one conversation or all, how many rows."""

    period: str
    at: date | None
    conversation: str | None
    limit: int


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--limit: {text!r} is not a positive number of conversations")
    return int(text)


def _from_store(client: Any, location: StoreLocation, question: Question) -> ConversationCosts:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        return build_conversation_report(client, question.period, question.at, question.conversation,
                                         limit=question.limit)  # fmt: skip
    except ClickHouseError as exc:
        first = query_error_line(exc, location)
        if "UNKNOWN_TABLE" in first or "Unknown table" in first:
            first = "it has no usage tables yet; run `tokenmeter db migrate --clickhouse-url URL`"
        raise ReportError(f"{location.display} could not answer the conversation query: {first}") from None


def _from_api(api: ServeApi, question: Question) -> tuple[ConversationCosts, str, str]:
    params = {"by": CONVERSATION, "period": question.period, "limit": str(question.limit)}
    if question.at is not None:
        params["at"] = question.at.isoformat()
    if question.conversation is not None:
        params["subject"] = question.conversation
    try:
        document = get_from_serve(api, "/v1/report", params).json()
        report = ConversationCosts.from_dict(document)
    except ValueError as exc:  # also a body that is not JSON
        raise ReportError(f"{api.url} did not answer with a conversation cost report: {exc}") from None
    store = document.get("store") if isinstance(document.get("store"), str) else None
    return report, answered_by(api, store), f"serve API {api.url}"


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter report: {message}\n")
    return code


# --- renderings ------------------------------------------------------------------


def price_label(section: CostSection) -> str:
    if section.currency is None:
        return "without a price"
    return f"{section.currency} (virtual)" if section.virtual else section.currency


def amount_text(amount: Decimal | None) -> str:
    """Exact, never an exponent: 0.0000006, not 6E-7; "–" for no price."""
    return "–" if amount is None else format(amount.normalize(), "f") if amount else "0"


def title(report: ConversationCosts) -> str:
    label = period_label(report.period, report.start)
    what = f" {report.conversation}" if report.conversation is not None else ""
    return f"Cost per conversation{what}, {label} ({report.period}, UTC)"


def render_table(report: ConversationCosts, console: Console, store: str = "") -> None:
    """One table per price (currency, virtual, or none), costliest conversations first; then the notes."""
    from rich.table import Table
    from rich.text import Text

    if not report.sections:
        console.print(Text(f"{title(report)}: no calls with a conversation id." + (f" ({store})" if store else "")))
    for section in report.sections:
        shown = _shown(section)
        table = Table(title=Text(f"{title(report)}: {price_label(section)}, {shown}", style="table.title"),
                      caption=Text(store, style="table.caption") if store else None, show_footer=True)  # fmt: skip
        for name, footer in (("conversation", "all"), ("user", ""), ("app", ""), ("calls", f"{section.calls:,}"),
                             ("input tokens", f"{section.input_tokens:,}"),
                             ("output tokens", f"{section.output_tokens:,}"), ("cost", amount_text(section.cost)),
                             ("first (UTC)", ""), ("last (UTC)", "")):  # fmt: skip
            table.add_column(name, footer=footer, justify="right" if name in _NUMBERS else "left")
        for row in section.rows:
            table.add_row(*_cells(row))
        console.print(table)
    for section in report.without_conversation:
        console.print(Text(f"Calls without a conversation id ({price_label(section)}): {section.calls:,} calls, "
                           f"{section.input_tokens + section.output_tokens:,} tokens, cost "
                           f"{amount_text(section.cost)}."))  # fmt: skip
    console.print(Text(RANKING_NOTE))
    console.print(Text(SOURCE_NOTE))


_NUMBERS: Final = frozenset({"calls", "input tokens", "output tokens", "cost"})


def _shown(section: CostSection) -> str:
    """Which conversations the table holds: "all 3", "the 20 costliest of 154", "20 of 31, most tokens first"."""
    count, total = len(section.rows), section.conversations
    if count == total:
        return f"all {total:,}" + ("" if section.currency else ", most tokens first")
    return f"the {count:,} costliest of {total:,}" if section.currency else f"{count:,} of {total:,}, most tokens first"


def _cells(row: ConversationRow) -> list[Any]:
    from rich.text import Text

    user = row.user or NONE_LABEL if row.users <= 1 else f"{row.users} users"
    app = row.app or NONE_LABEL if row.apps <= 1 else f"{row.apps} apps"
    return [Text(row.conversation), Text(user), Text(app), f"{row.calls:,}", f"{row.input_tokens:,}",
            f"{row.output_tokens:,}", amount_text(row.cost), _moment(row.first), _moment(row.last)]  # fmt: skip


def _moment(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def render_csv(report: ConversationCosts) -> str:
    """One line per conversation and price."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["conversation", "period", "currency", "virtual", "user", "users", "app", "apps", "calls",
                     "input_tokens", "output_tokens", "cost", "first", "last"])  # fmt: skip
    label = period_label(report.period, report.start)
    for section in report.sections:
        for row in section.rows:
            writer.writerow([row.conversation, label, section.currency or "", str(section.virtual).lower(), row.user,
                             row.users, row.app, row.apps, row.calls, row.input_tokens, row.output_tokens,
                             "" if row.cost is None else amount_text(row.cost), row.first.isoformat(),
                             row.last.isoformat()])  # fmt: skip
    return buffer.getvalue()
