"""`tokenmeter reconcile`: import a provider's usage or billing export and compare it with tokenmeter's calls
per day x model (docs/reconcile.md).

    tokenmeter reconcile --provider openai usage.json costs.json [--month 2026-11] [--format json]
    tokenmeter reconcile --provider deepseek usage_data_2026_11.zip --threshold 0.5

The import writes into the store, so the command opens it itself (as `db migrate` does): a chDB directory a
running `tokenmeter serve` holds is refused with the way out. Exit codes: 0 every month total within the
threshold; 3 a month total past it (the report says which); 2 bad input (a bad export names its file, line
and column; nothing is imported then); 1 the store failed.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, TextIO

from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_PAST_THRESHOLD
from tokenmeter.cli.input_error import InputError
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.reconcile.comparison import DEFAULT_THRESHOLD
from tokenmeter.reconcile.export_formats import PROVIDERS
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    from tokenmeter.reconcile.comparison import Reconciliation


def add_reconcile_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="compare tokenmeter's usage and cost with a provider's usage or billing export",
        description="Import a provider's export (JSON as its API answered, or CSV as its console exports) into the "
        "store and compare it with tokenmeter's calls per day and model: tokens by type and cost, in both "
        "directions. Exit code 3 when a month total differs by more than the threshold.",
    )
    reconcile.add_argument("--provider", required=True, choices=PROVIDERS, help="whose export the files are")
    reconcile.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="export files (CSV, JSON, or a ZIP of them); none: compare what earlier imports hold",
    )
    reconcile.add_argument(
        "--month", metavar="YYYY-MM", help="compare this month (default: the months the files cover)"
    )
    reconcile.add_argument("--from", dest="first", metavar="YYYY-MM-DD", help="compare from this day (with --to)")
    reconcile.add_argument("--to", dest="last", metavar="YYYY-MM-DD", help="to this day, inclusive")
    reconcile.add_argument(
        "--threshold",
        metavar="PERCENT",
        default=str(DEFAULT_THRESHOLD),
        help=f"a month total differing by more than this fails (default {DEFAULT_THRESHOLD} %%)",
    )
    reconcile.add_argument(
        "--model-alias",
        action="append",
        default=[],
        metavar="EXPORT=TOKENMETER",
        help="the export's model name for tokenmeter's, e.g. DeepSeek-V3.2=deepseek-chat (repeatable)",
    )
    reconcile.add_argument("--format", choices=("table", "json"), default="table", help="output (default table)")
    add_clickhouse_url_option(reconcile)
    reconcile.set_defaults(run=lambda args, stdout, _stdin: run_reconcile(args, stdout))


def run_reconcile(args: argparse.Namespace, stdout: TextIO) -> int:
    """Import, compare, print; the exit code says whether a month total passed the threshold."""
    from tokenmeter.reconcile.export_rows import ExportError
    from tokenmeter.reconcile.model_names import parse_aliases
    from tokenmeter.reconcile.renderings import render_json, render_table

    try:
        threshold = _threshold(args.threshold)
        aliases = parse_aliases(args.model_alias)
        reconciliation = _reconcile(args, threshold, aliases)
    except ExportError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except ValueError as exc:
        return _fail(_option_named(str(exc)), EXIT_BAD_INPUT)
    if args.format == "json":
        stdout.write(render_json(reconciliation))
    else:
        render_table(reconciliation, output_console(stdout))
    past = reconciliation.past_threshold
    if past:
        _fail(
            f"{len(past)} month total(s) differ by more than {args.threshold} %: "
            + ", ".join(f"{t.month} {t.token_type}" for t in past),
            EXIT_PAST_THRESHOLD,
        )
        return EXIT_PAST_THRESHOLD
    return EXIT_OK


def _reconcile(args: argparse.Namespace, threshold: Decimal, aliases: dict[str, str]) -> Reconciliation:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from tokenmeter.cli.serve_lookup import naming_the_holder
    from tokenmeter.store.client import StoreError, open_store, parse_store_url
    from tokenmeter.store.reconcile_queries import reconcile

    url = args.clickhouse_url or get_settings().clickhouse_url
    location = parse_store_url(url)
    with naming_the_holder(location):  # the import writes: the store is opened here, never through serve
        client = open_store(url, create=False)
    try:
        return reconcile(
            client,
            args.provider,
            args.files,
            month=args.month,
            first=args.first,
            last=args.last,
            threshold=threshold,
            aliases=aliases,
        )
    except ClickHouseError as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first_line = first_line.replace(location.password, "***") if location.password else first_line
        if "UNKNOWN_TABLE" in first_line or "provider_usage" in first_line:
            first_line = "it has no provider_usage table; run `tokenmeter db migrate --clickhouse-url URL`"
        raise StoreError(f"{location.display} could not reconcile: {first_line}") from None
    finally:
        client.close()


def _threshold(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        raise InputError(f"--threshold: {text!r} is not a percentage (a number from 0, e.g. 0.5)")
    return value


def _option_named(message: str) -> str:
    name, colon, rest = message.partition(":")
    options = {"month": "--month", "from": "--from", "to": "--to", "model-alias": "--model-alias"}
    return f"{options[name]}{colon}{rest}" if colon and name in options else message


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter reconcile: {message}\n")
    return code
