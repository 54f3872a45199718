"""`tokenmeter statement`: a department's monthly AI credits statement for chargeback, as CSV, HTML or JSON.

Where it comes from, as for `report`: a running `tokenmeter serve`'s API when it holds the chDB directory
(``GET /v1/credits/statement``, built with serve's policy) or when ``--api`` says so; else the store directly,
with the policy file of ``--policy`` or TOKENMETER_POLICY (none: the usage alone, and no wallet). Which one
answered, and errors, go to stderr; the statement to stdout or ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import unquote

from tokenmeter.cli.api_tokens import TokenFileError
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.report import ReportError, ServeApi
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.cli.store_or_serve import answered_by, get_from_serve, query_error_line, read_store_or_serve
from tokenmeter.errors import ConfigurationError
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    from tokenmeter.store.client import StoreLocation

FORMATS: Final = ("csv", "html", "json")
STORE_HEADER: Final = "x-tokenmeter-store"  # which store serve answered from (percent-encoded)


def add_statement_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statement = commands.add_parser(
        "statement",
        help="a department's monthly AI credits statement for chargeback (CSV, HTML or JSON)",
        description=(
            "Usage by user and model, its cost and credits, and the wallet's ledger (grants, top-ups with their "
            "approvers, charges, the balance at the month's end) for one month in the policy's time zone."
        ),
    )
    statement.add_argument("--department", required=True, metavar="NAME", help="the department")
    statement.add_argument("--month", required=True, metavar="YYYY-MM", help="the month, in the policy's time zone")
    statement.add_argument("--format", choices=FORMATS, default="csv", help="output (default csv)")
    policy_help = "the policy file with the wallets (default: TOKENMETER_POLICY; none: usage only)"
    statement.add_argument("--policy", type=Path, metavar="PATH", help=policy_help)
    statement.add_argument("--output", type=Path, metavar="FILE", help="write the statement here instead of stdout")
    add_clickhouse_url_option(statement)
    statement.add_argument("--api", metavar="URL", help="ask this `tokenmeter serve` API instead of the store")
    statement.set_defaults(run=lambda args, stdout, _stdin: run_statement(args, stdout))


def run_statement(args: argparse.Namespace, stdout: TextIO) -> int:
    """Write the statement; 0 ok, 1 the store or API could not answer, 2 bad input. Errors: one line on stderr."""
    try:
        text, answerer = _statement_text(args)
    except (ValueError, ConfigurationError) as exc:  # a bad month, policy file, or a wallet without a rate
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (ReportError, TokenFileError) as exc:
        return _fail(str(exc), getattr(exc, "exit_code", EXIT_UNAVAILABLE))
    _say(f"answered by {answerer}")
    if args.output is None:
        stdout.write(text)
        return EXIT_OK
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        return _fail(f"cannot write --output {args.output}: {exc.strerror}", EXIT_BAD_INPUT)
    _say(f"wrote {args.output}")
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter statement: {message}\n")
    return code


def _say(line: str) -> None:
    sys.stderr.write(f"tokenmeter statement: {line}\n")
    sys.stderr.flush()


def _statement_text(args: argparse.Namespace) -> tuple[str, str]:
    """The rendered statement and who answered."""
    return read_store_or_serve(
        "statement",
        args.clickhouse_url,
        args.api,
        lambda client, location: (_from_store(client, location, args), f"the store {location.display}"),
        lambda api: _from_api(api, args),
    )


def _from_store(client: Any, location: StoreLocation, args: argparse.Namespace) -> str:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from tokenmeter.credits.statement import StatementMonth
    from tokenmeter.enforcer.policy import Policy, load_policy
    from tokenmeter.store.statement_queries import read_statement

    path = args.policy or get_settings().policy
    policy = load_policy(path) if path is not None else Policy()
    month = StatementMonth.parse(args.month, policy.zone)
    try:
        statement = read_statement(client, args.department, month, policy.wallets, datetime.now(UTC))
    except ClickHouseError as exc:
        first = query_error_line(exc, location)
        if "UNKNOWN_TABLE" in first or "Unknown table" in first:
            first = "it has no usage or ledger tables yet; run `tokenmeter db migrate --clickhouse-url URL`"
        raise ReportError(f"{location.display} could not answer the statement's queries: {first}") from None
    return render(statement, args.format)


def render(statement: Any, form: str) -> str:
    """``statement`` (a :class:`~tokenmeter.credits.statement.Statement`) in ``form``: csv, html or json."""
    from tokenmeter.credits.statement_renderings import render_csv, render_html, render_json

    renderings = {"csv": render_csv, "html": render_html, "json": render_json}
    if form not in renderings:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {form!r}")
    return renderings[form](statement)


def _from_api(api: ServeApi, args: argparse.Namespace) -> tuple[str, str]:
    if args.policy is not None:
        _say("--policy is not used: the serve answering uses the policy file it was started with")
    params = {"department": args.department, "month": args.month, "format": args.format}
    response = get_from_serve(api, "/v1/credits/statement", params)
    return response.text, answered_by(api, unquote(response.headers.get(STORE_HEADER, "")))
