"""The options naming the store, shared by `db migrate`, `serve` and `report`."""

from __future__ import annotations

import argparse

from tokenmeter.cli.input_error import InputError

CLICKHOUSE_URL_HELP = "chdb:///path or http(s)://user:password@host:port/db (default: TOKENMETER_CLICKHOUSE_URL)"


def add_clickhouse_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clickhouse-url", metavar="URL", help=CLICKHOUSE_URL_HELP)


def check_ttl_days(args: argparse.Namespace) -> None:
    """Refuse a negative ``--ttl-days`` (0 keeps raw data forever)."""
    if args.ttl_days < 0:
        raise InputError(f"--ttl-days must be 0 (keep raw data forever) or a number of days, got {args.ttl_days}")
