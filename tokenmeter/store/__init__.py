"""tokenmeter's ClickHouse store: client factory, schema migrations and usage queries.

Importing this package is cheap; clickhouse-connect and chDB load only when a store
is opened (they live in the ``store`` extra).
"""

from __future__ import annotations

from tokenmeter.store.client import (
    StoreConfigError,
    StoreError,
    StoreLocation,
    StoreLockedError,
    open_store,
    parse_store_url,
)

__all__ = ["StoreConfigError", "StoreError", "StoreLocation", "StoreLockedError", "open_store", "parse_store_url"]
