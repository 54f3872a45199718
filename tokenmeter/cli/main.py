"""The ``tokenmeter`` command line.

    tokenmeter --version
    tokenmeter count --model qwen2.5-7b-instruct --text "人工智能"
    tokenmeter count --model gpt-4 --messages-json chat.json      # or "-" for stdin
    tokenmeter count --model deepseek-chat --file prompt.txt
    tokenmeter count --list-models [--models my-models.yaml]
    tokenmeter db migrate [--clickhouse-url URL] [--cluster NAME] [--ttl-days N] [--dry-run]
    tokenmeter serve [--host 127.0.0.1] [--otlp-grpc-port 4317] [--otlp-http-port 4318] [--api-port 9400]
    tokenmeter report [--by department|user|model|app] [--period day|week|month] [--format table|json|csv]
    tokenmeter enforcer --clickhouse-url URL --policy policy.yaml [--port 9400]
    tokenmeter reprice --from 2026-11-01 [--to 2026-11-30] [--model GLOB] [--apply] [--format table|json]
    tokenmeter compare [--period 2026-11] [--app A] [--models a,b] [--experiment NAME] [--format table|json|csv]
    tokenmeter reconcile --provider openai|deepseek|dashscope FILE... [--month YYYY-MM] [--format table|json]
    tokenmeter routing train LABELLED.csv --out intents.json | classify --policy FILE "question" | check --policy FILE
    tokenmeter check --model gpt-4o [--user U] [--department D] [--input-tokens N] [--reserve]
    tokenmeter demo [--dir .tokenmeter-demo]
    tokenmeter demo-traffic --otlp-endpoint URL --enforcer-url URL [--rounds N]
    tokenmeter tiktoken-cache DIR        # for TIKTOKEN_CACHE_DIR on hosts without internet

Exit codes: 0 success, 1 store failure (unreachable, locked by another process,
a failed or changed migration), 2 bad input (unreadable file, invalid JSON or
messages, broken catalog, bad arguments, a bad store URL), 3 a check past its threshold
(`reconcile`).

Each command's parser and run live in its own module (``count``, ``db``, ``serve``, ``report``, ``reprice``,
``reconcile``, ``quota``, ``routing``, ``demo``, ``tiktoken_cache``); here the parser is put together and errors
become exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

from pydantic import ValidationError

from tokenmeter.catalog import CatalogError
from tokenmeter.cli.compare import add_compare_parser
from tokenmeter.cli.count import add_count_parser
from tokenmeter.cli.credits import add_credits_parsers
from tokenmeter.cli.db import add_db_parser
from tokenmeter.cli.demo import add_demo_parsers
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE
from tokenmeter.cli.input_error import InputError
from tokenmeter.cli.quota import add_quota_parsers
from tokenmeter.cli.reconcile import add_reconcile_parser
from tokenmeter.cli.reprice import add_reprice_parser
from tokenmeter.cli.routing import add_routing_parser
from tokenmeter.cli.serve import add_serve_parser
from tokenmeter.cli.statement import add_statement_parser
from tokenmeter.cli.tiktoken_cache import add_tiktoken_cache_parser
from tokenmeter.cli.version import VersionAction
from tokenmeter.store.client import StoreConfigError, StoreError
from tokenmeter.store.migrations import MigrationError

QUIET_DRIVER_LOGGERS: Final = ("clickhouse_connect", "urllib3")


def _add_report_parser(commands: Any) -> None:
    from tokenmeter.cli.report import add_report_parser, run_report

    add_report_parser(commands)
    commands.choices["report"].set_defaults(run=lambda args, stdout, _stdin: run_report(args, stdout))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmeter", description="Token metering and cost accounting for LLM applications."
    )
    parser.add_argument("--version", action=VersionAction, help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in --help.
    add_count_parser(commands)
    add_db_parser(commands)
    add_serve_parser(commands)
    _add_report_parser(commands)
    add_statement_parser(commands)
    add_reprice_parser(commands)
    add_compare_parser(commands)
    add_reconcile_parser(commands)
    add_routing_parser(commands)
    add_quota_parsers(commands)
    add_credits_parsers(commands)
    add_demo_parsers(commands)
    add_tiktoken_cache_parser(commands)
    return parser


def _not_driver_chatter(record: logging.LogRecord) -> bool:
    """Drops the ClickHouse driver's warnings (urllib3's "Retrying ...", "Unexpected Http Driver Exception"):
    they repeat what its exception says, which becomes tokenmeter's one line. (A filter on the handler, since
    clickhouse-connect sets urllib3's level itself when imported.)"""
    return record.levelno >= logging.ERROR or not record.name.startswith(QUIET_DRIVER_LOGGERS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    # Library chatter from transformers would mix with our stderr diagnostics.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.addFilter(_not_driver_chatter)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[stderr])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    command = " ".join(filter(None, (args.command, getattr(args, "db_command", None))))
    try:
        return int(args.run(args, sys.stdout, sys.stdin))
    except BrokenPipeError:  # e.g. `tokenmeter count --list-models | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # keep the interpreter's final flush quiet
        return EXIT_OK
    except (InputError, CatalogError, StoreConfigError) as exc:
        sys.stderr.write(f"tokenmeter {command}: {exc}\n")
        return EXIT_BAD_INPUT
    except (StoreError, MigrationError) as exc:
        sys.stderr.write(f"tokenmeter {command}: {exc}\n")
        return EXIT_UNAVAILABLE
    except ValidationError as exc:
        sys.stderr.write(f"tokenmeter {command}: invalid TOKENMETER_* setting: {exc}\n")
        return EXIT_BAD_INPUT
