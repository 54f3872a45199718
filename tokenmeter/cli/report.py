"""`tokenmeter report`: usage by department, user, model or app for a day, week or month (and cost per
conversation: ``--by conversation``, in :mod:`tokenmeter.cli.conversation_report`).

Where the numbers come from: the store directly (a ClickHouse server, or a chDB directory
no process holds; one that does not exist is an error, exit 2, never created here), or a
running `tokenmeter serve`'s API when it holds the chDB directory (at the address it recorded
beside the lock, :mod:`tokenmeter.serve.api_address`; else TOKENMETER_API_URL) or when ``--api``
says so. Progress, which store or API answered, and errors go to stderr; the report to stdout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from tokenmeter.calendar_periods import PERIODS
from tokenmeter.cli.api_tokens import TokenFileError, api_token, bearer_headers, refusal
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.serve_lookup import serve_holding
from tokenmeter.cli.store_options import add_clickhouse_url_option
from tokenmeter.errors import TokenmeterError
from tokenmeter.reporting import (
    CONVERSATION,
    DIMENSIONS,
    UsageReport,
    build_usage_report,
    parse_day,
    render_csv,
    render_json,
    render_table,
)
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from clickhouse_connect.driver.client import Client

    from tokenmeter.store.client import StoreLocation

FORMATS: Final[tuple[str, ...]] = ("table", "json", "csv")
# serve answers a month by department in milliseconds; a long wait means something is wrong.
API_CONNECT_TIMEOUT_SECONDS: Final = 3.0
API_TIMEOUT_SECONDS: Final = 15.0


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
    report.add_argument("--by", choices=(*DIMENSIONS, CONVERSATION), default="department",
                        help="group by (default department); conversation: cost per conversation, from the "
                        "per-call spans")  # fmt: skip
    report.add_argument("--period", metavar="PERIOD", help="day, week, month or year (default month); with --waste a "
                        "month 2026-11, a day, an ISO week 2026-W45 or a year")  # fmt: skip
    report.add_argument("--at", metavar="YYYY-MM-DD", help="any day in the period (default today, UTC)")
    report.add_argument("--subject", metavar="NAME", help="only this department / user / model / app ('' = none)")
    report.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    add_clickhouse_url_option(report)
    report.add_argument(
        "--api", metavar="URL", help="ask this `tokenmeter serve` API instead of the store (e.g. http://127.0.0.1:9400)"
    )
    from tokenmeter.cli.conversation_report import add_conversation_options  # it builds on ReportError, ServeApi
    from tokenmeter.cli.waste import add_waste_options  # it builds on this module's ReportError and ServeApi

    add_conversation_options(report)
    add_waste_options(report)


def run_report(args: argparse.Namespace, stdout: TextIO) -> int:
    """Print the report; 0 ok, 1 the store or API could not answer, 2 bad input. Errors: one line on stderr."""
    from tokenmeter.cli.waste import run_waste, waste_only_option

    if args.waste or args.by == CONVERSATION:
        from tokenmeter.cli.conversation_report import run_conversation_report

        return (run_waste if args.waste else run_conversation_report)(args, stdout)
    misplaced = _misplaced_option(args, waste_only_option(args))
    if misplaced is not None:
        return _fail(misplaced, EXIT_BAD_INPUT)
    args.period = args.period or "month"
    if args.period not in PERIODS:
        return _fail(f"--period: {args.period!r} is not one of {', '.join(PERIODS)} (other periods: with --waste)",
                     EXIT_BAD_INPUT)  # fmt: skip
    try:
        at = parse_day(args.at)
        report, source = _fetch(args, at)
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except (ReportError, TokenFileError) as exc:
        return _fail(str(exc), getattr(exc, "exit_code", EXIT_UNAVAILABLE))
    _progress(f"answered by {source.answerer}")  # stderr: stdout stays the report alone
    if args.format == "json":
        stdout.write(render_json(report))
    elif args.format == "csv":
        stdout.write(render_csv(report))
    else:
        render_table(report, output_console(stdout), store=source.caption)
    return EXIT_OK


def _misplaced_option(args: argparse.Namespace, waste_option: str | None) -> str | None:
    """Why an option of another report given to the usage report is bad input, if one is."""
    if waste_option is not None:
        return f"{waste_option} is the waste report's: add --waste"
    if args.limit is not None:
        return f"--limit is the conversation report's: add --by {CONVERSATION}"
    return None


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter report: {message}\n")
    return code


def _progress(line: str) -> None:
    sys.stderr.write(f"tokenmeter report: {line}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Source:
    """Where a report came from: ``caption`` under the table, ``answerer`` in the line on stderr."""

    caption: str
    answerer: str


def _fetch(args: argparse.Namespace, at: date | None) -> tuple[UsageReport, Source]:
    """The report and where it came from."""
    settings = get_settings()
    if args.api:
        return _from_api(ServeApi(args.api), args, at)
    from tokenmeter.store import StoreLockedError, open_store, parse_store_url
    from tokenmeter.store.client import StoreConfigError, StoreError, StoreMissingError, lock_holder

    url = args.clickhouse_url or settings.clickhouse_url
    try:
        location = parse_store_url(url)
    except StoreConfigError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    # Ask the lock before chDB does: a refused open also prints chDB's own error on stderr.
    if location.kind == "chdb" and location.path is not None and lock_holder(location.path) is not None:
        return _from_serve_holding(location, args, at)
    try:
        client = open_store(url, create=False)  # a report never makes an empty store where none was
    except StoreLockedError:  # taken between the two looks
        return _from_serve_holding(location, args, at)
    except StoreMissingError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        report = _from_store(client, location, args, at)
    finally:
        client.close()
    return report, Source(location.display, f"the store {location.display}")


@dataclass(frozen=True)
class ServeApi:
    """A serve API to ask; ``held`` is the store it must answer for, when we know which serve holds it."""

    url: str
    held: StoreLocation | None = None
    token_file: Path | None = None


def _from_serve_holding(
    location: StoreLocation, args: argparse.Namespace, at: date | None
) -> tuple[UsageReport, Source]:
    """Ask the serve holding the chDB directory: at the address it recorded, else at TOKENMETER_API_URL."""
    record = serve_holding(location)
    if record is not None:
        _progress(
            f"{location.display} is held by `tokenmeter serve` (PID {record.pid}); asking its API at {record.api}"
        )
        return _from_api(ServeApi(record.api, location, record.api_token_file), args, at)
    from tokenmeter.store.client import lock_holder

    api = get_settings().api_url
    holder = lock_holder(location.path) if location.path is not None else None
    _progress(f"{location.display} is held by another process{holder or ''}, and no live serve recorded its API "
              f"address beside it; asking the API at TOKENMETER_API_URL ({api})")  # fmt: skip
    return _from_api(ServeApi(api, location), args, at)


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


def _from_api(api: ServeApi, args: argparse.Namespace, at: date | None) -> tuple[UsageReport, Source]:
    response = _get_report(api, args, at)
    try:
        document = response.json()
        report = UsageReport.from_dict(document)
    except ValueError as exc:  # also a body that is not JSON
        raise ReportError(f"{api.url} did not answer with a usage report: {exc}") from None
    store = document.get("store") if isinstance(document.get("store"), str) else None  # an older serve does not name it
    if api.held is not None and store is not None and not _same_store(store, api.held):
        raise ReportError(
            f"the serve API at {api.url} answers for the store {store}, not for {api.held.display}, which another "
            "process holds; point --api / TOKENMETER_API_URL at the serve holding it, or stop that process and "
            "read the store directly with --clickhouse-url"
        )
    answerer = f"the serve API at {api.url}" + (f" (store {store})" if store else "")
    return report, Source(f"serve API {api.url}", answerer)


def _get_report(api: ServeApi, args: argparse.Namespace, at: date | None) -> httpx.Response:
    """serve's answer to GET /v1/report, if it is 200; else ReportError naming the way out."""
    import httpx

    params = {"by": args.by, "period": args.period}
    if at is not None:
        params["at"] = at.isoformat()
    if args.subject is not None:
        params["subject"] = args.subject
    token = api_token(api.token_file)
    timeout = httpx.Timeout(API_TIMEOUT_SECONDS, connect=API_CONNECT_TIMEOUT_SECONDS)
    base = api.url.rstrip("/")
    try:
        response = httpx.get(f"{base}/v1/report", params=params, headers=bearer_headers(token), timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        held_by = f"{api.held.display} is held by another process, and " if api.held else ""
        raise ReportError(
            f"{held_by}cannot reach the serve API at {api.url} ({reason}); either start `tokenmeter serve` "
            "(or point --api / TOKENMETER_API_URL at the one running), or stop the process holding the store "
            "and read it directly with --clickhouse-url"
        ) from None
    if response.status_code == 401:
        raise ReportError(refusal(f"the serve API at {api.url}", token, "set TOKENMETER_API_TOKEN to serve's token "
                                  "(serve names the file it wrote it to when it starts)"))  # fmt: skip
    if response.status_code == 400:
        raise ReportError(f"the serve API at {api.url} rejected the request: {_error_text(response)}", EXIT_BAD_INPUT)
    if response.status_code != 200:
        raise ReportError(f"the serve API at {api.url} answered {response.status_code}: {_error_text(response)}")
    return response


def _same_store(display: str, location: StoreLocation) -> bool:
    """Whether serve's ``store`` (its display URL) is ``location``; chDB paths compared as resolved."""
    if location.kind == "chdb" and location.path is not None and display.startswith("chdb://"):
        return Path(display.removeprefix("chdb://")).resolve() == location.path.resolve()
    return display == location.display


def _error_text(response: httpx.Response) -> str:
    """serve's ``{"error": ...}``, else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else response.text[:300].strip()
