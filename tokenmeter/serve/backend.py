"""What serve's servers share: the enforcer, the store (migrated) with its reader, and the ingest queue.

Opened in two steps around the API token (:func:`open_quotas_and_store`, then :func:`start_backend`)
and closed, after the servers have stopped, by :meth:`Backend.close`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tokenmeter.collector.ingest_queue import IngestQueue, IngestSchema
from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.serve.config import ServeConfig
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.server.listening import ServerStartError
from tokenmeter.store import open_store

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.store.client import StoreLocation


@dataclass(frozen=True)
class Backend:
    """The running enforcer, reader and queue, and the store they use."""

    location: StoreLocation
    enforcer: EnforcerService
    reader: StoreReader
    queue: IngestQueue

    async def close(self) -> None:
        """Write what is queued, stop the enforcer (its leases go back), then the reader."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.queue.close)
        await loop.run_in_executor(None, self.enforcer.close)
        self.reader.close()


def open_quotas_and_store(
    config: ServeConfig, location: StoreLocation, progress: Callable[[str], None]
) -> tuple[EnforcerService, StoreReader]:
    """The enforcer (not yet started) and the store's reader, with every migration applied."""
    open_client = _client_opener(config)
    # Config before the store: a broken policy or model catalog leaves a new store uncreated.
    enforcer = _enforcer_service(config, open_client)
    reader = StoreReader(open_client)
    _migrate(reader, config, location.display, progress)
    return enforcer, reader


def start_backend(
    config: ServeConfig,
    location: StoreLocation,
    enforcer: EnforcerService,
    reader: StoreReader,
    progress: Callable[[str], None],
) -> Backend:
    """Start the enforcer's refresh and the ingest queue's writers."""
    _start_enforcer(enforcer, config, progress)
    queue = IngestQueue(
        _client_opener(config),
        IngestSchema.for_store(embedded=location.kind == "chdb"),
        max_pending_bytes=config.max_pending_bytes,
        batch_bytes=config.batch_bytes,
        flush_interval=config.flush_interval,
        writers=config.writers,
    )
    queue.start()
    return Backend(location, enforcer, reader, queue)


def _client_opener(config: ServeConfig) -> Callable[[], Client]:
    """Opens a new store client: the enforcer, the reader and each writer have their own."""
    return partial(open_store, config.clickhouse_url)


def _migrate(reader: StoreReader, config: ServeConfig, display: str, progress: Callable[[str], None]) -> None:
    from tokenmeter.store.migrations import RenderOptions, migrate

    progress(f"store {display}: applying migrations")
    options = RenderOptions(raw_ttl_days=config.raw_ttl_days)
    result = reader.call(lambda client: migrate(client, options, progress=progress))
    progress(f"store ready ({len(result.applied)} migrations applied, {len(result.already_applied)} already there)")


def _enforcer_service(config: ServeConfig, open_client: Callable[[], Client]) -> EnforcerService:
    """The enforcer with its policy and the model catalog loaded; touches no store (ServerStartError when broken)."""
    from tokenmeter.catalog import CatalogError, ModelCatalog
    from tokenmeter.enforcer.policy import PolicyError
    from tokenmeter.enforcer.replicas.coordination import CoordinationError
    from tokenmeter.settings import get_settings

    try:
        catalog = ModelCatalog.load(get_settings().models)
        return EnforcerService(open_client, config.enforcer, catalog)
    except (PolicyError, CatalogError, CoordinationError) as exc:
        raise ServerStartError(str(exc)) from None


def _start_enforcer(service: EnforcerService, config: ServeConfig, progress: Callable[[str], None]) -> None:
    service.start()
    policy = config.enforcer.policy_path
    if policy is None:
        progress("quotas: no policy (--policy or TOKENMETER_POLICY): every check is allowed")
    else:
        progress(f"quotas: {len(service.enforcer.policy.budgets)} budgets from {policy}")
