"""`tokenmeter enforcer` (the quota sidecar on its own) and `tokenmeter check` (ask it once).

tokenmeter enforcer --clickhouse-url http://… --policy policy.yaml [--port 9400]
tokenmeter check --user alice --department 研发部 --model gpt-4o --input-tokens 1200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final, TextIO

from pydantic import ValidationError

from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.quota_wire import CheckBody, wire_json
from tokenmeter.settings import enforcer_client_token, get_settings

CHECK_TIMEOUT_SECONDS: Final = 5.0


def add_quota_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enforcer = commands.add_parser(
        "enforcer",
        help="run the quota sidecar against a shared store (production)",
        description=(
            "Answer /v1/check from the policy and the store's usage aggregates. Prints a JSON line when ready; "
            "SIGHUP (or a changed file) reloads the policy; SIGTERM stops."
        ),
    )
    enforcer.add_argument("--clickhouse-url", metavar="URL", help="default: TOKENMETER_CLICKHOUSE_URL")
    enforcer.add_argument("--policy", type=Path, metavar="PATH", help="policy YAML (default: TOKENMETER_POLICY)")
    enforcer.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    enforcer.add_argument("--port", type=int, default=9400, help="HTTP port (default 9400)")
    add_enforcer_options(enforcer)
    enforcer.add_argument("--token-file", type=Path, metavar="PATH",
                          help="where to write a generated token when TOKENMETER_ENFORCER_TOKEN is unset "
                               "(default: <data dir>/enforcer-token)")  # fmt: skip
    enforcer.set_defaults(run=lambda args, stdout, _stdin: run_enforcer_command(args, stdout))

    check = commands.add_parser(
        "check",
        help="ask the enforcer for a decision; prints it as JSON",
        description=(
            "Ask a running serve or enforcer what it would decide for a call. Nothing is reserved unless "
            "--reserve is given. Exit 0 with a decision, 1 when the enforcer cannot answer, 2 on bad input."
        ),
    )
    check.add_argument("--model", required=True, help="model as the app would request it")
    check.add_argument("--user", default="")
    check.add_argument("--department", default="")
    check.add_argument("--app", default="")
    check.add_argument("--input-tokens", type=int, default=0, metavar="N")
    check.add_argument("--max-output-tokens", type=int, metavar="N", help="default: the policy's estimate")
    check.add_argument("--reserve", action="store_true", help="hold the estimate as a real call would")
    check.add_argument("--url", help="enforcer URL (default: TOKENMETER_ENFORCER_URL, else TOKENMETER_API_URL)")
    check.set_defaults(run=lambda args, stdout, _stdin: run_check_command(args, stdout))


def add_enforcer_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `serve` and `enforcer`; defaults come from the TOKENMETER_ENFORCER_* settings."""
    from tokenmeter.enforcer.quota_service import DEFAULT_LEASE_MAX_CALLS, DEFAULT_LEASE_SECONDS

    parser.add_argument("--refresh-interval", type=float, metavar="SECONDS",
                        help="how often usage is read from the store (default 5)")  # fmt: skip
    parser.add_argument("--settle-seconds", type=float, metavar="SECONDS",
                        help="how long a finished call stays reserved, until the store shows its usage "
                             "(default 90: the SDK's 60 s export interval plus ingest)")  # fmt: skip
    parser.add_argument("--lease-calls", type=int, default=DEFAULT_LEASE_MAX_CALLS, metavar="N",
                        help="an app may decide up to N calls like one it asked about by itself, for "
                             f"{DEFAULT_LEASE_SECONDS:g} s, while every budget is far from its first warning "
                             f"threshold; 1 turns leases off (default {DEFAULT_LEASE_MAX_CALLS})")  # fmt: skip


def enforcer_options(args: argparse.Namespace, policy: Path | None) -> Any:
    from tokenmeter.enforcer.quota_service import EnforcerOptions

    settings = get_settings()
    refresh = args.refresh_interval if args.refresh_interval is not None else settings.enforcer_refresh_seconds
    settle = args.settle_seconds if args.settle_seconds is not None else settings.enforcer_settle_seconds
    if refresh <= 0 or settle < 0:
        raise ValueError("--refresh-interval must be above 0 and --settle-seconds at least 0")
    if args.lease_calls < 1:
        raise ValueError(f"--lease-calls must be 1 (no leases) or more, got {args.lease_calls}")
    return EnforcerOptions(
        policy_path=policy,
        refresh_seconds=refresh,
        settle_seconds=settle,
        clock_offset_seconds=settings.enforcer_clock_offset,
        lease_max_calls=args.lease_calls,
        coordination_url=settings.coordination_url,
    )


def run_enforcer_command(args: argparse.Namespace, _stdout: TextIO) -> int:
    from tokenmeter.catalog import CatalogError, ModelCatalog
    from tokenmeter.enforcer.policy import PolicyError
    from tokenmeter.enforcer.replicas.coordination import CoordinationError
    from tokenmeter.enforcer.sidecar import EnforcerConfig, run_enforcer
    from tokenmeter.server.listening import ServerStartError
    from tokenmeter.settings import default_data_dir
    from tokenmeter.store.client import StoreConfigError, parse_store_url, require_existing_store

    settings = get_settings()
    try:
        options = enforcer_options(args, args.policy or settings.policy)
        clickhouse_url = args.clickhouse_url or settings.clickhouse_url
        # The enforcer never migrates: a chDB path that does not exist is a wrong URL, not a store to make.
        require_existing_store(parse_store_url(clickhouse_url))
        config = EnforcerConfig(
            clickhouse_url=clickhouse_url,
            options=options,
            host=args.host,
            port=args.port,
            token=settings.enforcer_token.get_secret_value() if settings.enforcer_token else None,
            token_file=args.token_file or default_data_dir() / "enforcer-token",
        )
        catalog = ModelCatalog.load(settings.models)
        logging.getLogger("tokenmeter").setLevel(logging.INFO)
        return run_enforcer(config, catalog, progress=_stderr)
    except CoordinationError as exc:  # the coordination server is down or unreachable: like a store failure
        _stderr(f"tokenmeter enforcer: {exc}")
        return EXIT_UNAVAILABLE
    except (ValueError, PolicyError, CatalogError, ServerStartError, StoreConfigError) as exc:
        _stderr(f"tokenmeter enforcer: {exc}")
        return EXIT_BAD_INPUT


def run_check_command(args: argparse.Namespace, stdout: TextIO) -> int:
    import httpx

    settings = get_settings()
    base = (args.url or settings.enforcer_url or settings.api_url).rstrip("/")
    if args.input_tokens < 0 or (args.max_output_tokens is not None and args.max_output_tokens < 0):
        _stderr("tokenmeter check: token numbers must not be negative")
        return EXIT_BAD_INPUT
    try:
        body = CheckBody(user=args.user, department=args.department, app=args.app, model=args.model,
                         input_tokens=args.input_tokens, max_output_tokens=args.max_output_tokens,
                         dry_run=not args.reserve)  # fmt: skip
    except ValidationError as exc:
        _stderr(f"tokenmeter check: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
        return EXIT_BAD_INPUT
    token = enforcer_client_token(settings)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.post(f"{base}/v1/check", json=wire_json(body), headers=headers, timeout=CHECK_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        _stderr(f"tokenmeter check: cannot reach the enforcer at {base} ({exc or type(exc).__name__}); "
                "start `tokenmeter serve` or point --url / TOKENMETER_ENFORCER_URL at it")  # fmt: skip
        return EXIT_UNAVAILABLE
    if response.status_code == 401:
        _stderr(f"tokenmeter check: {base} refused the token; set TOKENMETER_ENFORCER_TOKEN")
        return EXIT_UNAVAILABLE
    if response.status_code != 200:
        _stderr(f"tokenmeter check: {base} answered {response.status_code}: {response.text[:300]}")
        return EXIT_BAD_INPUT if response.status_code in {400, 413} else EXIT_UNAVAILABLE
    stdout.write(json.dumps(response.json(), ensure_ascii=False, indent=2) + "\n")
    return EXIT_OK


def _stderr(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
