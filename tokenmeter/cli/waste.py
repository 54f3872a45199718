"""`tokenmeter report --waste`: repeated prompts, long inputs, context share, unread streams, retries, and what the
cache and the routing rules would have saved, for one period (docs/waste.md).

Where the numbers come from, as for `compare`: the store directly, or a running `tokenmeter serve`'s API
(``GET /v1/waste``) when it holds the chDB directory or when ``--api`` says so. The routing replay's rules come
from ``--policy`` (else TOKENMETER_POLICY); asked of serve without them, serve replays the policy it enforces.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO

from tokenmeter.cli.api_tokens import TokenFileError
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.output_console import output_console
from tokenmeter.cli.report import ReportError, ServeApi
from tokenmeter.cli.store_or_serve import answered_by, get_from_serve, query_error_line, read_store_or_serve
from tokenmeter.comparison.periods import PERIOD_HELP
from tokenmeter.settings import get_settings
from tokenmeter.waste.waste_query import CACHE_TTL_SECONDS, HEAVY_FACTOR, HEAVY_MIN_CALLS, RETRY_WINDOW_SECONDS, TOP

if TYPE_CHECKING:
    from tokenmeter.store.client import StoreLocation
    from tokenmeter.waste.routing_replay import ReplayPolicy
    from tokenmeter.waste.waste_query import WasteQuery
    from tokenmeter.waste.waste_report import WasteReport

# option -> WasteQuery.parse's name; only with --waste
WASTE_OPTIONS: Final = {"timezone": "timezone", "cache_ttl": "cache_ttl", "retry_window": "retry_window",
                        "top": "top", "heavy_factor": "heavy_factor", "heavy_min_calls": "heavy_min_calls"}  # fmt: skip
NO_POLICY: Final = "no policy to replay: give --policy FILE (or TOKENMETER_POLICY) with a routing section"


def add_waste_options(report: argparse.ArgumentParser) -> None:
    waste = report.add_argument_group("waste report (--waste; docs/waste.md)")
    waste.add_argument("--waste", action="store_true", help="the waste report instead of usage; --period then takes "
                       f"{PERIOD_HELP} (default this month)")  # fmt: skip
    waste.add_argument(
        "--policy", metavar="FILE", help="replay this policy's routing rules (default TOKENMETER_POLICY)"
    )
    waste.add_argument("--cache-ttl", metavar="SECONDS", help=f"the cache replay's TTL (default {CACHE_TTL_SECONDS})")
    waste.add_argument(
        "--retry-window",
        metavar="SECONDS",
        help=f"the same prompt again within this is a retry (default {RETRY_WINDOW_SECONDS})",
    )
    waste.add_argument("--timezone", metavar="ZONE", help="the period's time zone (default UTC)")
    waste.add_argument("--top", metavar="N", help=f"rows per finding (default {TOP})")
    waste.add_argument(
        "--heavy-factor",
        metavar="X",
        help=f"long inputs: X times the department's input per call (default {HEAVY_FACTOR:g})",
    )
    waste.add_argument("--heavy-min-calls", metavar="N", help=f"long inputs: users with N calls or more "
                       f"(default {HEAVY_MIN_CALLS})")  # fmt: skip


def waste_only_option(args: argparse.Namespace) -> str | None:
    """The first waste option given without --waste (bad input), else None."""
    for name in (*WASTE_OPTIONS, "policy"):
        if getattr(args, name, None) is not None:
            return "--" + name.replace("_", "-")
    return None


def run_waste(args: argparse.Namespace, stdout: TextIO) -> int:
    """Print the waste report; 0 ok, 1 the store or API could not answer, 2 bad input."""
    from tokenmeter.waste.renderings import render_csv, render_json, render_table
    from tokenmeter.waste.waste_query import WasteQuery

    if args.at is not None or args.subject is not None:
        return _fail("--at and --subject are the usage report's; --waste takes --period", EXIT_BAD_INPUT)
    try:
        query = WasteQuery.parse(
            period=args.period, **{key: getattr(args, name) for name, key in WASTE_OPTIONS.items()}
        )
        policy, note = _replay_policy(args.policy)
        report, answerer, caption = _fetch(args, query, policy, note)
    except ValueError as exc:
        return _fail(_option_named(str(exc)), EXIT_BAD_INPUT)
    except (ReportError, TokenFileError) as exc:
        return _fail(str(exc), getattr(exc, "exit_code", EXIT_UNAVAILABLE))
    _say(f"answered by {answerer}")
    if args.format == "json":
        stdout.write(render_json(report))
    elif args.format == "csv":
        stdout.write(render_csv(report))
    else:
        render_table(report, output_console(stdout), store=caption)
    return EXIT_OK


def _option_named(message: str) -> str:
    """``cache_ttl: ...`` -> ``--cache-ttl: ...`` (the option as typed)."""
    name, colon, rest = message.partition(":")
    return f"--{name.replace('_', '-')}{colon}{rest}" if colon and name in (*WASTE_OPTIONS, "period") else message


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"tokenmeter report: {message}\n")
    return code


def _say(line: str) -> None:
    sys.stderr.write(f"tokenmeter report: {line}\n")
    sys.stderr.flush()


def _replay_policy(path: str | None) -> tuple[ReplayPolicy | None, str]:
    """The routing section to replay (--policy, else TOKENMETER_POLICY) with the catalog's prices, or why none."""
    from tokenmeter.catalog import CatalogError, ModelCatalog
    from tokenmeter.enforcer.policy import PolicyError, load_policy
    from tokenmeter.waste.routing_replay import ReplayPolicy

    settings = get_settings()
    chosen = path or (str(settings.policy) if settings.policy else None)
    if chosen is None:
        return None, NO_POLICY
    try:
        policy = load_policy(chosen)
        catalog = ModelCatalog.load(settings.models)
    except (PolicyError, CatalogError, OSError) as exc:
        raise ValueError(f"policy: {exc}") from None
    if policy.routing is None:
        return None, f"the policy {chosen} has no routing section"
    return ReplayPolicy(policy.routing, chosen, catalog.price_for), ""


def _fetch(args: argparse.Namespace, query: WasteQuery, policy: ReplayPolicy | None,
           note: str) -> tuple[WasteReport, str, str]:  # fmt: skip
    """The report, who answered (for stderr) and the caption under the table."""
    return read_store_or_serve(
        "report",
        args.clickhouse_url,
        args.api,
        lambda client, location: (_from_store(client, location, query, policy, note),
                                  f"the store {location.display}", location.display),
        lambda api: _from_api(api, query, policy, explicit=bool(args.policy)),
    )  # fmt: skip


def _from_store(client: Any, location: StoreLocation, query: WasteQuery, policy: ReplayPolicy | None,
                note: str) -> WasteReport:  # fmt: skip
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from tokenmeter.store.waste_queries import read_waste

    try:
        return read_waste(client, query, policy, note)
    except ClickHouseError as exc:
        first = query_error_line(exc, location)
        if "UNKNOWN_TABLE" in first or "Unknown table" in first or "UNKNOWN_IDENTIFIER" in first:
            first = "it lacks the waste report's columns; run `tokenmeter db migrate --clickhouse-url URL`"
        raise ReportError(f"{location.display} could not answer the waste report's query: {first}") from None


def _from_api(api: ServeApi, query: WasteQuery, policy: ReplayPolicy | None,
              explicit: bool) -> tuple[WasteReport, str, str]:  # fmt: skip
    """serve's ``GET /v1/waste``; a policy named here travels as its routing section (serve prices at its catalog)."""
    from tokenmeter.waste.waste_report import WasteReport

    params = query.parameters()
    if policy is not None and explicit:
        params |= {"routing": routing_parameter(policy), "policy": policy.label}
    try:
        document = get_from_serve(api, "/v1/waste", params).json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ReportError(f"{api.url} did not answer with a waste report (not a JSON object)")
    try:
        report = WasteReport.from_dict(document)
    except ValueError as exc:
        raise ReportError(f"{api.url} did not answer with a waste report: {exc}") from None
    store = document.get("store") if isinstance(document.get("store"), str) else None
    return report, answered_by(api, store), f"serve API {api.url}"


def routing_parameter(policy: ReplayPolicy) -> str:
    """The routing section as ``GET /v1/waste``'s ``routing`` parameter: what the replay reads (tiers, apps,
    critical apps, rules), compact JSON (the intents and classifier classify questions; stored calls carry theirs)."""
    section = policy.routing.model_dump(mode="json", exclude={"intents", "classifier"}, exclude_none=True)
    return json.dumps(section, ensure_ascii=False, separators=(",", ":"))
