"""`tokenmeter compare`: models by cost and by their users' ratings, per app, for one period (docs/compare.md).

Where the numbers come from, as for `report`: the store directly, or a running `tokenmeter serve`'s API
(``GET /v1/compare``) when it holds the chDB directory or when ``--api`` says so. Progress, which store or API
answered, and errors go to stderr; the table (or JSON, CSV) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO

from tokenmeter.cli.api_tokens import TokenFileError
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.report import ReportError, ServeApi
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.cli.store_or_serve import answered_by, get_from_serve, query_error_line, read_store_or_serve
from tokenmeter.comparison.comparison_query import ComparisonQuery
from tokenmeter.comparison.pair_findings import MARGIN, MIN_RATINGS
from tokenmeter.comparison.periods import PERIOD_HELP

if TYPE_CHECKING:
    from tokenmeter.comparison.model_comparison import Comparison
    from tokenmeter.store.client import StoreLocation

FORMATS: Final = ("table", "json", "csv")


def add_compare_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    compare = commands.add_parser(
        "compare",
        help="models by cost and by their users' ratings, per app (and an experiment's arms side by side)",
        description=(
            "Per app and model: answers, rated answers, mean rating with its 95 % confidence interval, tokens and "
            "cost per answer, cost per rating point; for each pair, what moving the app from one model to the other "
            "would have cost and how the ratings differ. Progress goes to stderr, the comparison to stdout."
        ),
    )
    compare.add_argument("--period", metavar="PERIOD", help=f"{PERIOD_HELP} (default: this month)")
    compare.add_argument("--timezone", metavar="ZONE", default="UTC", help="the period's time zone (default UTC)")
    compare.add_argument("--app", metavar="NAME", help="only this app")
    compare.add_argument("--models", metavar="A,B", help="only these models; the pair is the first -> each other")
    compare.add_argument("--experiment", metavar="NAME", help="this experiment's calls, arms side by side "
                         "(the pair: control -> candidate; docs/experiments.md)")  # fmt: skip
    compare.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    compare.add_argument("--min-ratings", type=int, default=MIN_RATINGS, metavar="N",
                         help=f"rated answers each side needs for a verdict (default {MIN_RATINGS})")  # fmt: skip
    compare.add_argument("--margin", type=float, default=MARGIN, metavar="POINTS",
                         help=f"ratings closer than this are similar quality (default {MARGIN:g}, of 100)")  # fmt: skip
    add_clickhouse_url_option(compare)
    compare.add_argument("--api", metavar="URL", help="ask this `tokenmeter serve` API instead of the store")
    compare.set_defaults(run=lambda args, stdout, _stdin: run_compare(args, stdout))


def run_compare(args: argparse.Namespace, stdout: TextIO) -> int:
    """Print the comparison; 0 ok, 1 the store or API could not answer, 2 bad input. Errors: one line on stderr."""
    from tokenmeter.comparison.renderings import render_csv, render_json, render_table

    try:
        options = ("period", "timezone", "app", "models", "experiment", "min_ratings", "margin")
        query = ComparisonQuery.parse(**{name: getattr(args, name) for name in options})
        comparison, answerer, caption = _fetch(args, query)
    except ValueError as exc:
        return _fail(str(exc).replace("min_ratings:", "--min-ratings:").replace("margin:", "--margin:"), EXIT_BAD_INPUT)
    except (ReportError, TokenFileError) as exc:
        return _fail(str(exc), getattr(exc, "exit_code", EXIT_UNAVAILABLE))
    _say(f"answered by {answerer}")
    if args.format == "json":
        stdout.write(render_json(comparison))
    elif args.format == "csv":
        stdout.write(render_csv(comparison))
    else:
        render_table(comparison, output_console(stdout), store=caption)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter compare: {message}\n")
    return code


def _say(line: str) -> None:
    sys.stderr.write(f"tokenmeter compare: {line}\n")
    sys.stderr.flush()


def _fetch(args: argparse.Namespace, query: ComparisonQuery) -> tuple[Comparison, str, str]:
    """The comparison, who answered (for stderr) and the caption under the table."""
    return read_store_or_serve(
        "compare",
        args.clickhouse_url,
        args.api,
        lambda client, location: (_from_store(client, location, query), f"the store {location.display}",
                                  location.display),
        lambda api: _from_api(api, query),
    )  # fmt: skip


def _from_store(client: Any, location: StoreLocation, query: ComparisonQuery) -> Comparison:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from tokenmeter.store.rating_queries import read_comparison

    try:
        return read_comparison(client, query)
    except ClickHouseError as exc:
        first = query_error_line(exc, location)
        if "UNKNOWN_TABLE" in first or "Unknown table" in first or "UNKNOWN_IDENTIFIER" in first:
            first = "it has no ratings tables yet; run `tokenmeter db migrate --clickhouse-url URL`"
        raise ReportError(f"{location.display} could not answer the comparison's query: {first}") from None


def _from_api(api: ServeApi, query: ComparisonQuery) -> tuple[Comparison, str, str]:
    from tokenmeter.comparison.model_comparison import Comparison

    try:
        document = get_from_serve(api, "/v1/compare", query.parameters()).json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ReportError(f"{api.url} did not answer with a comparison (not a JSON object)")
    try:
        comparison = Comparison.from_dict(document)
    except ValueError as exc:
        raise ReportError(f"{api.url} did not answer with a comparison: {exc}") from None
    store = document.get("store") if isinstance(document.get("store"), str) else None
    return comparison, answered_by(api, store), f"serve API {api.url}"
