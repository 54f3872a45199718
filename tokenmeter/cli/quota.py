"""`tokenmeter enforcer` (the quota sidecar on its own) and `tokenmeter check` (ask it once).

tokenmeter enforcer --clickhouse-url http://… --policy policy.yaml [--port 9400]
tokenmeter check --user alice --department 研发部 --model gpt-4o --input-tokens 1200
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from pydantic import ValidationError

from tokenmeter.cli.api_tokens import SentToken, TokenFileError, bearer_headers, enforcer_token, refusal
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.errors import TokenmeterError
from tokenmeter.quota_wire import CheckBody, wire_json
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    from tokenmeter.serve.api_address import ServeRecord

CHECK_TIMEOUT_SECONDS: Final = 5.0
ENFORCER_TOKEN_FIX: Final = (
    "set TOKENMETER_ENFORCER_TOKEN to the enforcer's token (the apps' token, or serve's API token)"  # noqa: S105
)


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
            "Ask a running serve or enforcer what it would decide for a call; the answer goes to stdout as JSON, "
            "which enforcer answered (and its policy file) to stderr. Nothing is reserved unless --reserve is "
            "given. Exit 0 with a decision, 1 when the enforcer cannot answer, 2 on bad input."
        ),
    )
    check.add_argument("--model", required=True, help="model as the app would request it")
    check.add_argument("--user", default="")
    check.add_argument("--department", default="")
    check.add_argument("--app", default="")
    check.add_argument("--input-tokens", type=int, default=0, metavar="N")
    check.add_argument("--max-output-tokens", type=int, metavar="N", help="default: the policy's estimate")
    check.add_argument("--reserve", action="store_true", help="hold the estimate as a real call would")
    check.add_argument("--url", help="enforcer URL (default: TOKENMETER_ENFORCER_URL, else TOKENMETER_API_URL, else "
                                     "the serve holding TOKENMETER_CLICKHOUSE_URL's chDB directory, else "
                                     "http://127.0.0.1:9400)")  # fmt: skip
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
    parser.add_argument("--no-wallet-charges", dest="charge_wallets", action="store_false",
                        help="do not record wallets' grants and daily charges in the ledger (with enforcer "
                             "replicas, every replica but one; docs/credits.md)")  # fmt: skip


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
        charge_wallets=args.charge_wallets,
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


class CheckError(TokenmeterError):
    """`tokenmeter check` could not get a decision; the message is its one line on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_check_command(args: argparse.Namespace, stdout: TextIO) -> int:
    """The decision as JSON on stdout, which enforcer answered on stderr; 1 when none could answer, 2 bad input."""
    try:
        body = _check_body(args)
        enforcer = _enforcer_to_ask(args)
        token = enforcer_token(enforcer.serve.api_token_file if enforcer.serve else None)
        decision = _ask(enforcer, body, token)
    except CheckError as exc:
        _stderr(f"tokenmeter check: {exc}")
        return exc.exit_code
    except TokenFileError as exc:
        _stderr(f"tokenmeter check: {exc}")
        return EXIT_UNAVAILABLE
    stdout.write(json.dumps(decision, ensure_ascii=False, indent=2) + "\n")
    stdout.flush()
    policy = _policy_in_force(enforcer.base, bearer_headers(token))
    _stderr(f"tokenmeter check: answered by {enforcer.describe()}{policy}")
    return EXIT_OK


def _check_body(args: argparse.Namespace) -> CheckBody:
    if args.input_tokens < 0 or (args.max_output_tokens is not None and args.max_output_tokens < 0):
        raise CheckError("token numbers must not be negative", EXIT_BAD_INPUT)
    try:
        return CheckBody(user=args.user, department=args.department, app=args.app, model=args.model,
                         input_tokens=args.input_tokens, max_output_tokens=args.max_output_tokens,
                         dry_run=not args.reserve)  # fmt: skip
    except ValidationError as exc:
        raise CheckError(f"{exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", EXIT_BAD_INPUT) from None


def _ask(enforcer: EnforcerToAsk, body: CheckBody, token: SentToken) -> Any:
    """The enforcer's decision document; CheckError when it cannot be reached or does not decide."""
    import httpx

    try:
        response = httpx.post(f"{enforcer.base}/v1/check", json=wire_json(body), headers=bearer_headers(token),
                              timeout=CHECK_TIMEOUT_SECONDS)  # fmt: skip
    except httpx.HTTPError as exc:
        raise CheckError(
            f"cannot reach the enforcer at {enforcer.base} ({exc or type(exc).__name__}); "
            "start `tokenmeter serve` or point --url / TOKENMETER_ENFORCER_URL at it"
        ) from None
    if response.status_code == 401:
        raise CheckError(refusal(f"the enforcer at {enforcer.base}", token, ENFORCER_TOKEN_FIX))
    if response.status_code != 200:
        code = EXIT_BAD_INPUT if response.status_code in {400, 413} else EXIT_UNAVAILABLE
        raise CheckError(f"{enforcer.base} answered {response.status_code}: {response.text[:300]}", code)
    return response.json()


@dataclass(frozen=True)
class EnforcerToAsk:
    """The enforcer's base URL, and the serve it belongs to when found holding the configured chDB store."""

    base: str
    serve: ServeRecord | None = None

    def describe(self) -> str:
        if self.serve is None:
            return f"the enforcer at {self.base}"
        return f"the enforcer of `tokenmeter serve` (PID {self.serve.pid}, store {self.serve.store}) at {self.base}"


def _enforcer_to_ask(args: argparse.Namespace) -> EnforcerToAsk:
    """--url, TOKENMETER_ENFORCER_URL, TOKENMETER_API_URL when set; else the serve holding the configured
    chDB store (at the address it recorded), else TOKENMETER_API_URL's default."""
    settings = get_settings()
    api_url_set = settings.api_url if "api_url" in settings.model_fields_set else None
    explicit = args.url or settings.enforcer_url or api_url_set
    if explicit:
        return EnforcerToAsk(explicit.rstrip("/"))
    from tokenmeter.cli.serve_lookup import serve_holding_url

    serve = serve_holding_url(settings.clickhouse_url)
    if serve is not None:
        return EnforcerToAsk(serve.api.rstrip("/"), serve)
    return EnforcerToAsk(settings.api_url.rstrip("/"))


def _policy_in_force(base: str, headers: dict[str, str]) -> str:
    """ " (policy FILE, sha256 …)" from the enforcer's GET /v1/policy, to tell one enforcer from another; "" if
    it does not say."""
    import httpx

    try:
        document = httpx.get(f"{base}/v1/policy", headers=headers, timeout=CHECK_TIMEOUT_SECONDS).json()
    except (httpx.HTTPError, ValueError):
        return ""
    if not isinstance(document, dict) or "source" not in document:
        return ""
    if document["source"] is None:
        return " (no policy: every check is allowed)"
    return f" (policy {document['source']}, sha256 {str(document.get('checksum'))[:12]})"


def _stderr(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
