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

from tokenmeter.cli.api_tokens import TokenFileError, api_token, bearer_headers, refusal
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.report import API_CONNECT_TIMEOUT_SECONDS, API_TIMEOUT_SECONDS, ReportError, ServeApi
from tokenmeter.cli.serve_lookup import serve_holding
from tokenmeter.cli.store_options import add_clickhouse_url_option
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
    if args.api:
        return _from_api(ServeApi(args.api), args)
    from tokenmeter.store import StoreLockedError, open_store, parse_store_url
    from tokenmeter.store.client import StoreConfigError, StoreError, StoreMissingError, lock_holder

    url = args.clickhouse_url or get_settings().clickhouse_url
    try:
        location = parse_store_url(url)
    except StoreConfigError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    if location.kind == "chdb" and location.path is not None and lock_holder(location.path) is not None:
        return _from_api(_serve_api(location), args)
    try:
        client = open_store(url, create=False)  # a statement never makes an empty store
    except StoreLockedError:  # taken between the two looks
        return _from_api(_serve_api(location), args)
    except StoreMissingError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        return _from_store(client, location, args), f"the store {location.display}"
    finally:
        client.close()


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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if location.password:
            first = first.replace(location.password, "***")
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


def _serve_api(location: StoreLocation) -> ServeApi:
    """The serve holding the chDB directory (at the address it recorded), else TOKENMETER_API_URL's."""
    record = serve_holding(location)
    if record is not None:
        _say(f"{location.display} is held by `tokenmeter serve` (PID {record.pid}); asking its API at {record.api}")
        return ServeApi(record.api, location, record.api_token_file)
    api = get_settings().api_url
    _say(f"{location.display} is held by another process that recorded no API address; asking {api}")
    return ServeApi(api, location)


def _from_api(api: ServeApi, args: argparse.Namespace) -> tuple[str, str]:
    import httpx

    if args.policy is not None:
        _say("--policy is not used: the serve answering uses the policy file it was started with")
    params = {"department": args.department, "month": args.month, "format": args.format}
    token = api_token(api.token_file)
    timeout = httpx.Timeout(API_TIMEOUT_SECONDS, connect=API_CONNECT_TIMEOUT_SECONDS)
    url = f"{api.url.rstrip('/')}/v1/credits/statement"
    try:
        response = httpx.get(url, params=params, headers=bearer_headers(token), timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise ReportError(f"cannot reach the serve API at {api.url} ({reason}); start `tokenmeter serve`, or "
                          "point --api / TOKENMETER_API_URL at the one running") from None  # fmt: skip
    if response.status_code == 401:
        raise ReportError(refusal(f"the serve API at {api.url}", token, "set TOKENMETER_API_TOKEN to serve's token"))
    if response.status_code != 200:
        code = EXIT_BAD_INPUT if response.status_code == 400 else EXIT_UNAVAILABLE
        raise ReportError(f"the serve API at {api.url} answered {response.status_code}: {_error(response)}", code)
    store = unquote(response.headers.get(STORE_HEADER, ""))
    if api.held is not None and store and not _same_store(store, api.held):
        raise ReportError(f"the serve API at {api.url} answers for the store {store}, not for {api.held.display}; "
                          "point --api / TOKENMETER_API_URL at the serve holding it")  # fmt: skip
    return response.text, f"the serve API at {api.url}" + (f" (store {store})" if store else "")


def _same_store(display: str, location: StoreLocation) -> bool:
    if location.kind == "chdb" and location.path is not None and display.startswith("chdb://"):
        return Path(display.removeprefix("chdb://")).resolve() == location.path.resolve()
    return display == location.display


def _error(response: Any) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:300]).strip()
