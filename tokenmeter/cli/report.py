"""`tokenmeter report`: usage by department, user, model or app for a day, week or month.

Where the numbers come from: the store directly (a ClickHouse server, or a chDB directory
no process holds; one that does not exist is an error, exit 2, never created here), or a
running `tokenmeter serve`'s API when it holds the chDB directory (or when ``--api`` says
so). Progress and errors go to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import TYPE_CHECKING, Final, TextIO

from tokenmeter.calendar_periods import PERIODS
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.errors import TokenmeterError
from tokenmeter.reporting import (
    DIMENSIONS,
    UsageReport,
    build_usage_report,
    parse_day,
    render_csv,
    render_json,
    render_table,
)
from tokenmeter.settings import default_api_token_file, get_settings

if TYPE_CHECKING:
    import httpx
    from clickhouse_connect.driver.client import Client

    from tokenmeter.store.client import StoreLocation

FORMATS: Final[tuple[str, ...]] = ("table", "json", "csv")
# serve answers a month by department in milliseconds; a long wait means something is wrong.
API_CONNECT_TIMEOUT_SECONDS: Final = 3.0
API_TIMEOUT_SECONDS: Final = 15.0
TABLE_WIDTH_NOT_A_TERMINAL: Final = 120


class ReportError(TokenmeterError):
    """The report cannot be made; the message names the way out."""

    def __init__(self, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` and its options; the caller dispatches on ``args.command == "report"``."""
    report = commands.add_parser(
        "report",
        help="usage by department, user, model or app for a day, week or month",
        description=(
            "Token usage and cost for one UTC calendar period, from the store or a running serve's API. "
            "Progress goes to stderr, the report to stdout."
        ),
    )
    report.add_argument("--by", choices=DIMENSIONS, default="department", help="group by (default department)")
    report.add_argument("--period", choices=PERIODS, default="month", help="day, ISO week or month (default month)")
    report.add_argument("--at", metavar="YYYY-MM-DD", help="any day in the period (default today, UTC)")
    report.add_argument("--subject", metavar="NAME", help="only this department / user / model / app ('' = none)")
    report.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    add_clickhouse_url_option(report)
    report.add_argument(
        "--api", metavar="URL", help="ask this `tokenmeter serve` API instead of the store (e.g. http://127.0.0.1:9400)"
    )


def run_report(args: argparse.Namespace, stdout: TextIO) -> int:
    """Print the report; 0 ok, 1 the store or API could not answer, 2 bad input. Errors: one line on stderr."""
    try:
        at = parse_day(args.at)
        report, source = _fetch(args, at)
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except ReportError as exc:
        return _fail(str(exc), exc.exit_code)
    if args.format == "json":
        stdout.write(render_json(report))
    elif args.format == "csv":
        stdout.write(render_csv(report))
    else:
        from rich.console import Console

        # A pipe or file gets a fixed width, so the table does not wrap at rich's default 80.
        width = None if stdout.isatty() else TABLE_WIDTH_NOT_A_TERMINAL
        render_table(report, Console(file=stdout, width=width), store=source)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter report: {message}\n")
    return code


def _progress(line: str) -> None:
    sys.stderr.write(f"tokenmeter report: {line}\n")
    sys.stderr.flush()


def _fetch(args: argparse.Namespace, at: date | None) -> tuple[UsageReport, str]:
    """The report and a description of where it came from."""
    settings = get_settings()
    if args.api:
        return _from_api(args.api, args, at), f"serve API {args.api}"
    from tokenmeter.store import StoreLockedError, open_store, parse_store_url
    from tokenmeter.store.client import StoreConfigError, StoreError, StoreMissingError, lock_holder

    url = args.clickhouse_url or settings.clickhouse_url
    try:
        location = parse_store_url(url)
    except StoreConfigError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    # Ask the lock before chDB does: a refused open also prints chDB's own error on stderr.
    if location.kind == "chdb" and location.path is not None and lock_holder(location.path) is not None:
        return _from_serve_holding(location.display, args, at)
    try:
        client = open_store(url, create=False)  # a report never makes an empty store where none was
    except StoreLockedError:  # taken between the two looks
        return _from_serve_holding(location.display, args, at)
    except StoreMissingError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        return _from_store(client, location, args, at), location.display
    finally:
        client.close()


def _from_serve_holding(store: str, args: argparse.Namespace, at: date | None) -> tuple[UsageReport, str]:
    api = get_settings().api_url
    _progress(f"{store} is held by another process (a running serve); asking its API at {api}")
    return _from_api(api, args, at, held=store), f"serve API {api}"


def _from_store(client: Client, location: StoreLocation, args: argparse.Namespace, at: date | None) -> UsageReport:
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        return build_usage_report(client, args.by, args.period, at, args.subject)
    except ClickHouseError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if location.password:
            message = message.replace(location.password, "***")
        if "UNKNOWN_TABLE" in message or "Unknown table" in message:
            raise ReportError(
                f"{location.display} has no usage tables yet; run `tokenmeter db migrate --clickhouse-url URL` "
                "(or `tokenmeter serve`, which migrates) and send it some usage"
            ) from None
        raise ReportError(f"{location.display} could not answer the usage query: {message}") from None


def _api_token() -> str | None:
    """TOKENMETER_API_TOKEN, else the token file serve writes on this machine."""
    token = get_settings().api_token
    if token is not None:
        return token.get_secret_value()
    path = default_api_token_file()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"cannot read the serve API token file {path}: {exc.strerror}; "
                          "set TOKENMETER_API_TOKEN instead") from None  # fmt: skip


def _from_api(base: str, args: argparse.Namespace, at: date | None, held: str | None = None) -> UsageReport:
    import httpx

    params = {"by": args.by, "period": args.period}
    if at is not None:
        params["at"] = at.isoformat()
    if args.subject is not None:
        params["subject"] = args.subject
    token = _api_token()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(API_TIMEOUT_SECONDS, connect=API_CONNECT_TIMEOUT_SECONDS)
    try:
        response = httpx.get(f"{base.rstrip('/')}/v1/report", params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        held_by = f"{held} is held by another process, and " if held else ""
        raise ReportError(
            f"{held_by}cannot reach the serve API at {base} ({reason}); either start `tokenmeter serve` "
            "(or point --api / TOKENMETER_API_URL at the one running), or stop the process holding the store "
            "and read it directly with --clickhouse-url"
        ) from None
    if response.status_code == 401:
        raise ReportError(
            f"the serve API at {base} refused the token: set TOKENMETER_API_TOKEN to serve's token "
            f"(serve writes it to {default_api_token_file()} on its machine)"
        )
    if response.status_code == 400:
        raise ReportError(f"the serve API at {base} rejected the request: {_error_text(response)}", EXIT_BAD_INPUT)
    if response.status_code != 200:
        raise ReportError(f"the serve API at {base} answered {response.status_code}: {_error_text(response)}")
    try:
        return UsageReport.from_dict(response.json())
    except ValueError as exc:  # also a body that is not JSON
        raise ReportError(f"{base} did not answer with a usage report: {exc}") from None


def _error_text(response: httpx.Response) -> str:
    """serve's ``{"error": ...}``, else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else response.text[:300].strip()
