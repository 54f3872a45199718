"""`tokenmeter report`: usage by department, user, model or app for a day, week or month.

Where the numbers come from: the store directly (a ClickHouse server, or a chDB directory
no process holds), or a running `tokenmeter serve`'s API when it holds the chDB
directory (or when ``--api`` says so).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import Any, Final, TextIO

from tokenmeter.reporting import DIMENSIONS, PERIODS, UsageReport, render_csv, render_json, render_table
from tokenmeter.settings import default_data_dir, get_settings

EXIT_OK: Final = 0
EXIT_UNAVAILABLE: Final = 1
EXIT_BAD_INPUT: Final = 2
API_TIMEOUT_SECONDS: Final = 30.0


class ReportError(Exception):
    """The report cannot be made; the message names the way out."""


def add_report_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="usage by department, user, model or app for a day, week or month",
        description="Token usage and cost for one UTC calendar period, from the store or a running serve's API.",
    )
    report.add_argument("--by", choices=DIMENSIONS, default="department", help="group by (default department)")
    report.add_argument("--period", choices=PERIODS, default="month", help="day, ISO week or month (default month)")
    report.add_argument("--at", metavar="YYYY-MM-DD", help="any day in the period (default today, UTC)")
    report.add_argument("--subject", metavar="NAME", help="only this department / user / model / app")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default table)")
    report.add_argument(
        "--clickhouse-url", metavar="URL", help="the store (default TOKENMETER_CLICKHOUSE_URL)"
    )
    report.add_argument(
        "--api", metavar="URL", help="ask this `tokenmeter serve` API instead of the store (e.g. http://127.0.0.1:9400)"
    )


def run_report(args: argparse.Namespace, stdout: TextIO) -> int:
    try:
        at = date.fromisoformat(args.at) if args.at else None
    except ValueError:
        sys.stderr.write(f"tokenmeter report: --at {args.at!r} is not a date; use YYYY-MM-DD\n")
        return EXIT_BAD_INPUT
    try:
        report, source = _fetch(args, at)
    except ReportError as exc:
        sys.stderr.write(f"tokenmeter report: {exc}\n")
        return EXIT_UNAVAILABLE
    if args.format == "json":
        stdout.write(render_json(report))
    elif args.format == "csv":
        stdout.write(render_csv(report))
    else:
        from rich.console import Console

        render_table(report, Console(file=stdout, width=120), store=source)
    return EXIT_OK


def _fetch(args: argparse.Namespace, at: date | None) -> tuple[UsageReport, str]:
    settings = get_settings()
    if args.api:
        return _from_api(args.api, args, at), args.api
    from tokenmeter.store import StoreLockedError, open_store, parse_store_url
    from tokenmeter.store.client import StoreError

    url = args.clickhouse_url or settings.clickhouse_url
    location = parse_store_url(url)
    try:
        client = open_store(url)
    except StoreLockedError:
        sys.stderr.write(f"tokenmeter report: {location.display} is held by a running serve; asking its API at "
                         f"{settings.api_url}\n")  # fmt: skip
        return _from_api(settings.api_url, args, at), settings.api_url
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    from tokenmeter.reporting import build_usage_report

    try:
        _check_schema(client, location.display)
        return build_usage_report(client, args.by, args.period, at, subject=args.subject), location.display
    except ReportError:
        raise
    except Exception as exc:  # the store answered with an error: say which, without a traceback
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ReportError(f"the store {location.display} could not answer: {first_line[:300]}") from None
    finally:
        client.close()


def _check_schema(client: Any, display: str) -> None:
    """A store without tokenmeter's tables (or behind on migrations) is a setup step, not a crash."""
    from tokenmeter.store.migrations import applied_migrations, load_migrations

    try:
        applied = applied_migrations(client)
    except Exception:
        applied = {}
    missing = [migration.file_name for migration in load_migrations() if migration.version not in applied]
    if missing:
        state = "has no tokenmeter schema" if not applied else f"lacks migration {missing[0]}"
        raise ReportError(
            f"the store {display} {state}: run `tokenmeter db migrate --clickhouse-url ...`, or start "
            "`tokenmeter serve`, which applies the migrations"
        )


def _api_token() -> str | None:
    token = get_settings().api_token
    if token is not None:
        return token.get_secret_value()
    path = default_data_dir() / "api-token"
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def _from_api(base: str, args: argparse.Namespace, at: date | None) -> UsageReport:
    import httpx

    params = {"by": args.by, "period": args.period}
    if at is not None:
        params["at"] = at.isoformat()
    if args.subject is not None:
        params["subject"] = args.subject
    token = _api_token()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{base.rstrip('/')}/v1/usage", params=params, headers=headers,
                             timeout=API_TIMEOUT_SECONDS)  # fmt: skip
    except httpx.HTTPError as exc:
        raise ReportError(
            f"cannot reach the serve API at {base} ({exc}); start `tokenmeter serve`, set TOKENMETER_API_URL, "
            "or read a store no process holds with --clickhouse-url"
        ) from None
    if response.status_code == 401:
        raise ReportError(
            f"the serve API at {base} refused the token: set TOKENMETER_API_TOKEN to serve's token "
            f"(serve writes it to {default_data_dir() / 'api-token'})"
        )
    if response.status_code != 200:
        raise ReportError(f"the serve API at {base} answered {response.status_code}: {response.text[:300]}")
    return UsageReport.from_dict(response.json())
