"""`tokenmeter db migrate`: create or update the store's schema, or print it (``--dry-run``).

tokenmeter db migrate [--clickhouse-url URL] [--cluster NAME] [--ttl-days N] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from tokenmeter.cli.exit_codes import EXIT_OK
from tokenmeter.cli.input_error import InputError
from tokenmeter.cli.store_options import add_clickhouse_url_option, check_ttl_days
from tokenmeter.settings import get_settings
from tokenmeter.store.migrations import DEFAULT_RAW_TTL_DAYS, MigrationError, RenderOptions


def add_db_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser("db", help="manage the ClickHouse store", description="Manage the ClickHouse store.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate = db_commands.add_parser(
        "migrate",
        help="create or update the schema",
        description="Apply the schema migrations not yet applied. Progress goes to stderr, a JSON summary to stdout.",
    )
    add_clickhouse_url_option(migrate)
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
    migrate.set_defaults(run=run_db_migrate)


def run_db_migrate(args: argparse.Namespace, stdout: TextIO, _stdin: TextIO) -> int:
    check_ttl_days(args)
    try:
        options = RenderOptions(cluster=args.cluster, raw_ttl_days=args.ttl_days)
    except MigrationError as exc:
        raise InputError(str(exc)) from None
    if args.dry_run:  # renders every migration; does not connect (a chDB directory stays free)
        _print_migrations(options, stdout)
        return EXIT_OK
    from tokenmeter.cli.serve_lookup import naming_the_holder
    from tokenmeter.store import migrations
    from tokenmeter.store.client import open_store, parse_store_url

    url = args.clickhouse_url if args.clickhouse_url is not None else get_settings().clickhouse_url
    location = parse_store_url(url)

    def progress(line: str) -> None:
        sys.stderr.write(f"tokenmeter db migrate: {line}\n")

    progress(f"store {location.display}")
    with naming_the_holder(location):  # serve migrates when it starts: say where it answers
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


def _print_migrations(options: RenderOptions, stdout: TextIO) -> None:
    """Every migration's SQL as it would be applied, after the table that records them."""
    from tokenmeter.store import migrations

    rendered = migrations.render_all(options)
    stdout.write(f"-- the record of applied migrations\n{migrations.migrations_table_sql(options)};\n")
    for migration, statements in rendered:
        stdout.write(f"\n-- {migration.file_name} (sha256 {migration.checksum})\n")
        stdout.write("".join(f"{statement};\n\n" for statement in statements))
