"""`tokenmeter reprice`: the cost of stored calls again, at the catalog's prices (docs/accounting.md#repricing).

    tokenmeter reprice --from 2026-11-01 [--to 2026-11-30] [--model 'qwen-*'] [--apply] [--format table|json]

A price changed in the catalog applies to calls made from then on; stored calls keep the cost they were billed
at until this command is asked. It reads the calls of llm_usage (``FINAL``) in the UTC days given, prices each
one as it was billed (:mod:`tokenmeter.cli.reprice_calls`) and prints per day x model x currency the calls,
their cost before and after and the difference. Nothing is written without ``--apply``; with it, each changed
call's row is inserted again with its new cost, price date and tier (the newer row replaces the older), and the
run is logged in ``cost_reprices``. The usage counters are never changed (they keep the cost as charged).

The store is opened directly (a ClickHouse server, or a chDB directory no process holds): reprice writes, so it
does not go through a running serve. Progress goes to stderr, the summary to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from tokenmeter.catalog import ModelCatalog
from tokenmeter.cli.exit_codes import EXIT_OK
from tokenmeter.cli.input_error import InputError
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.reprice_calls import model_matches, priced_model, reprice, skipped
from tokenmeter.cli.reprice_summary import RepriceSummary
from tokenmeter.cli.reprice_table import render_table
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

FORMATS: Final = ("table", "json")
_DAY_HELP: Final = "a UTC day, YYYY-MM-DD"
_PAGES_PER_PROGRESS: Final = 20


def add_reprice_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reprice = commands.add_parser(
        "reprice",
        help="recompute stored calls' cost at the catalog's prices (a dry run unless --apply)",
        description=(
            "Recompute the cost of the calls in llm_usage from --from to --to (UTC days, inclusive) at the catalog's "
            "prices valid when each call was made, and show what changes per day, model and currency. --apply "
            "writes the new costs and logs the run in cost_reprices. The usage counters (the cost as charged, which "
            "budgets and statements used) are never changed. Progress goes to stderr, the summary to stdout."
        ),
    )
    reprice.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD", help=f"first day ({_DAY_HELP})")
    reprice.add_argument("--to", dest="last", metavar="YYYY-MM-DD", help=f"last day, inclusive ({_DAY_HELP}; "
                         "default today)")  # fmt: skip
    reprice.add_argument("--model", metavar="GLOB", help="only calls priced by models matching GLOB, e.g. 'qwen-*'")
    reprice.add_argument("--apply", action="store_true", help="write the new costs (default: a dry run)")
    reprice.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    reprice.add_argument("--models", type=Path, metavar="PATH", help="model catalog YAML (overrides TOKENMETER_MODELS)")
    add_clickhouse_url_option(reprice)
    reprice.set_defaults(run=run_reprice)


def run_reprice(args: argparse.Namespace, stdout: TextIO, _stdin: TextIO) -> int:
    """Reprice and print the summary; bad input, a locked or missing store and store failures raise (see main)."""
    first, last = _days(args.first, args.last)
    models_path = args.models if args.models is not None else get_settings().models
    catalog = ModelCatalog.load(models_path)
    summary = RepriceSummary(first, last, args.model, describe_catalog(models_path))
    client = _open_store(args.clickhouse_url, writing=args.apply)
    try:
        run = ApplyRun.start(summary) if args.apply else None
        _reprice_range(client, catalog, summary, run)
        summary.counted_calls = _counted_calls(client, summary)
    finally:
        client.close()
    if args.format == "json":
        stdout.write(json.dumps({**summary.to_dict(), "run_id": run.run_id if run else None}, indent=2) + "\n")
    else:
        render_table(summary, output_console(stdout), run.run_id if run else None)
    return EXIT_OK


@dataclass(frozen=True)
class ApplyRun:
    """An ``--apply`` run: its id (in cost_reprices and in each insert's deduplication token) and start."""

    run_id: str
    at: datetime

    @classmethod
    def start(cls, summary: RepriceSummary) -> ApplyRun:
        summary.applied = True
        return cls(uuid.uuid4().hex, datetime.now(UTC))


def _reprice_range(client: Client, catalog: ModelCatalog, summary: RepriceSummary, run: ApplyRun | None) -> None:
    """Every day of the range with calls, page by page; with ``run``, each page's changed rows written as read."""
    from tokenmeter.store.reprice_queries import calls_of_day, days_with_calls, rewrite_calls

    days = days_with_calls(client, summary.first, summary.last)
    _progress(f"{sum(count for _, count in days):,} calls on {len(days)} days to read")
    for number, (day, _) in enumerate(days, start=1):
        read = rewritten = 0
        for page_number, page in enumerate(calls_of_day(client, day)):
            changed = _reprice_page(page, catalog, summary)
            if run is not None:
                rewrite_calls(client, changed, f"tokenmeter-reprice-{run.run_id}-{day.isoformat()}-{page_number}")
            read, rewritten = read + len(page), rewritten + len(changed)
            if page_number and page_number % _PAGES_PER_PROGRESS == 0:  # a busy day: say it is moving
                _progress(f"{day.isoformat()}: {read:,} calls read so far")
        if run is not None:
            _log_day(client, summary, run, day)
        verb = "rewritten" if run is not None else "to rewrite"
        _progress(f"{day.isoformat()} (day {number} of {len(days)}): {read:,} calls read, {rewritten:,} {verb}")


def _reprice_page(page: list[dict[str, Any]], catalog: ModelCatalog, summary: RepriceSummary) -> list[dict[str, Any]]:
    """Tally a page's calls of the models asked for; the rows that change, with their new cost columns."""
    from tokenmeter.store.usage_queries import REFUSED_ERROR_TYPES

    changed = []
    for row in page:
        if not model_matches(summary.model_filter, priced_model(row, catalog)):
            continue
        summary.calls_sent_seen += row["error_type"] not in REFUSED_ERROR_TYPES
        reason = skipped(row)
        if reason is not None:
            summary.leave(reason)
            continue
        call = reprice(row, catalog)
        summary.add(call)
        if call.changed:
            changed.append({**row, **call.new.columns()})
    return changed


def _log_day(client: Client, summary: RepriceSummary, run: ApplyRun, day: date) -> None:
    """The day's rows of cost_reprices: one per model and currency whose calls were rewritten (or left for another
    currency: a call that lost its price leaves its old cost behind in its old currency)."""
    from tokenmeter.store.reprice_queries import RepriceLogRow, record_reprices

    record_reprices(client, [
        RepriceLogRow(run.run_id, run.at, summary.first, summary.last, summary.model_filter or "", key.day, key.model,
                      key.currency, key.virtual, tally.calls, tally.rewritten, tally.became_priced,
                      tally.became_unpriced, tally.old_cost, tally.new_cost, summary.catalog)
        for key, tally in summary.rows() if key.day == day and (tally.rewritten or tally.difference)
    ])  # fmt: skip


def _counted_calls(client: Client, summary: RepriceSummary) -> int:
    """The usage counters' calls in the range, of the models asked for."""
    from tokenmeter.store.reprice_queries import counted_calls

    pattern = summary.model_filter
    return counted_calls(client, summary.first, summary.last, lambda model: model_matches(pattern, model))


def _open_store(url: str | None, *, writing: bool) -> Client:
    """The store (a chDB directory another process holds is refused), with the migrations a reprice needs."""
    from tokenmeter.cli.serve_lookup import naming_the_holder
    from tokenmeter.store import StoreError, open_store, parse_store_url
    from tokenmeter.store.reprice_queries import missing_schema

    url = url or get_settings().clickhouse_url
    location = parse_store_url(url)
    _progress(f"store {location.display}")
    with naming_the_holder(location):
        client = open_store(url, create=False)
    problem = missing_schema(client, writing=writing)
    if problem is not None:
        client.close()
        raise StoreError(f"{location.display}: {problem}; run `tokenmeter db migrate --clickhouse-url URL` first")
    return client


def describe_catalog(user_file: Path | None) -> str:
    """Which catalog priced the run, for its log: the built-in file's and the user file's sha256."""
    import tokenmeter

    builtin = resources.files("tokenmeter.catalog").joinpath("models.yaml").read_bytes()
    text = f"built-in models.yaml of tokenmeter {tokenmeter.__version__} (sha256 {_digest(builtin)})"
    if user_file is None:
        return text
    return f"{user_file} (sha256 {_digest(Path(user_file).read_bytes())}) + {text}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _days(first: str, last: str | None) -> tuple[date, date]:
    start = _day("--from", first)
    end = _day("--to", last) if last else datetime.now(UTC).date()
    if end < start:
        raise InputError(f"--to ({end.isoformat()}) is before --from ({start.isoformat()})")
    return start, end


def _day(option: str, text: str) -> date:
    try:
        if len(text) != len("2026-11-01"):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a day; use YYYY-MM-DD, e.g. 2026-11-01") from None


def _progress(line: str) -> None:
    sys.stderr.write(f"tokenmeter reprice: {line}\n")
    sys.stderr.flush()
