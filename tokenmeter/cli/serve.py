"""`tokenmeter serve`: its options, grouped by what they set, and the run.

tokenmeter serve [--host 127.0.0.1] [--otlp-grpc-port 4317] [--otlp-http-port 4318] [--api-port 9400]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tokenmeter.cli.input_error import InputError
from tokenmeter.cli.quota import add_enforcer_options, enforcer_options
from tokenmeter.cli.store_options import add_clickhouse_url_option, check_ttl_days
from tokenmeter.collector.limits import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_WRITERS,
)
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS
from tokenmeter.settings import get_settings
from tokenmeter.store.migrations import DEFAULT_RAW_TTL_DAYS

if TYPE_CHECKING:
    from tokenmeter.serve.config import ServeConfig


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the embedded collector and API (one process, embedded ClickHouse by default)",
        description=(
            "Apply migrations, then receive OTLP on gRPC and HTTP into the store and serve the usage API. "
            "A JSON line on stdout says when it is ready; SIGTERM writes everything queued and exits."
        ),
    )
    _add_listening_options(serve)
    _add_store_options(serve)
    _add_ingest_options(serve)
    _add_connection_options(serve)
    serve.add_argument("--policy", type=Path, metavar="PATH",
                       help="quota policy YAML (default: TOKENMETER_POLICY; none: every check is allowed)")  # fmt: skip
    add_enforcer_options(serve)
    serve.set_defaults(run=run_serve_command)


def _add_listening_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--otlp-grpc-port", type=int, default=4317, metavar="PORT", help="OTLP/gRPC (default 4317)")
    serve.add_argument("--otlp-http-port", type=int, default=4318, metavar="PORT", help="OTLP/HTTP (default 4318)")
    serve.add_argument("--api-port", type=int, default=9400, metavar="PORT", help="HTTP API (default 9400)")


def _add_store_options(serve: argparse.ArgumentParser) -> None:
    add_clickhouse_url_option(serve)
    serve.add_argument(
        "--ttl-days",
        type=int,
        default=DEFAULT_RAW_TTL_DAYS,
        metavar="N",
        help=f"keep raw otel_* rows N days when creating tables; 0 keeps them (default {DEFAULT_RAW_TTL_DAYS})",
    )


def _add_ingest_options(serve: argparse.ArgumentParser) -> None:
    """How much the receivers take in and how the queue writes it to the store."""
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help="largest OTLP request, after decompression; larger ones get 413 (default 64 MiB)",
    )
    serve.add_argument(
        "--max-queue-bytes",
        type=int,
        default=DEFAULT_MAX_PENDING_BYTES,
        metavar="N",
        help="requests waiting to be written; beyond it senders get 429 / RESOURCE_EXHAUSTED (default 256 MiB)",
    )
    serve.add_argument(
        "--flush-interval",
        type=float,
        default=DEFAULT_FLUSH_INTERVAL,
        metavar="SECONDS",
        help="least time between two inserts; requests arriving meanwhile share the next one (default 0.05)",
    )
    serve.add_argument(
        "--writers",
        type=int,
        default=DEFAULT_WRITERS,
        metavar="N",
        help=f"concurrent inserts, one store client each (default {DEFAULT_WRITERS})",
    )


def _add_connection_options(serve: argparse.ArgumentParser) -> None:
    """How long a client may hold a connection or take to send a request."""
    serve.add_argument(
        "--body-timeout",
        type=_positive_seconds,
        default=DEFAULT_BODY_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="a request body (OTLP/HTTP, API) must arrive within this time, else 408 (default 30)",
    )
    serve.add_argument(
        "--grpc-max-connection-age",
        type=_positive_seconds,
        default=DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
        metavar="SECONDS",
        help="close OTLP/gRPC connections after this long; clients reconnect (default 300)",
    )


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def run_serve_command(args: argparse.Namespace, _stdout: TextIO, _stdin: TextIO) -> int:
    from tokenmeter.cli.serve_lookup import naming_the_holder
    from tokenmeter.serve.process import run_serve
    from tokenmeter.server.listening import ServerStartError
    from tokenmeter.store.client import parse_store_url

    config = serve_config(args)
    logging.getLogger("tokenmeter").setLevel(logging.INFO)

    def progress(line: str) -> None:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    # A held store is refused before chDB's own lock error and before the ports are taken.
    with naming_the_holder(parse_store_url(config.clickhouse_url)):
        try:
            return run_serve(config, progress=progress)
        except ServerStartError as exc:
            raise InputError(str(exc)) from None


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The serve configuration from the options and the TOKENMETER_* settings (InputError when they are bad)."""
    from tokenmeter.serve.config import ServeConfig

    settings = get_settings()
    check_ttl_days(args)
    try:
        quotas = enforcer_options(args, args.policy or settings.policy)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return ServeConfig(
        clickhouse_url=args.clickhouse_url if args.clickhouse_url is not None else settings.clickhouse_url,
        host=args.host,
        otlp_grpc_port=args.otlp_grpc_port,
        otlp_http_port=args.otlp_http_port,
        api_port=args.api_port,
        api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        otlp_token=settings.otlp_token.get_secret_value() if settings.otlp_token else None,
        raw_ttl_days=args.ttl_days,
        max_request_bytes=args.max_request_bytes,
        max_pending_bytes=args.max_queue_bytes,
        flush_interval=args.flush_interval,
        writers=args.writers,
        body_timeout=args.body_timeout,
        grpc_max_connection_age=args.grpc_max_connection_age,
        enforcer=quotas,
        enforcer_token=settings.enforcer_token.get_secret_value() if settings.enforcer_token else None,
    )
