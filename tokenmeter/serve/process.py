"""Run `tokenmeter serve`: check the config, migrate the store, then OTLP gRPC + HTTP receivers and the API.

Start-up binds every socket first, so a port in use is one clear error before anything
runs. When ready, one JSON line on stdout names the bound addresses (ports given as 0
are picked by the OS; tests use that). SIGTERM / SIGINT stop the receivers from taking
new requests, let in-flight ones finish, write everything queued, then exit 0.

The phases, in order: the store's URL and the sockets; the enforcer's config and the
migrated store (:mod:`~tokenmeter.serve.backend`); the tokens
(:mod:`~tokenmeter.serve.access_tokens`); the enforcer and the ingest queue; the servers
(:mod:`~tokenmeter.serve.servers`); the API's address beside a chDB directory's lock
(:mod:`~tokenmeter.serve.api_address`) and the ready line; then, on a signal, the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.serve import access_tokens
from tokenmeter.serve.api_address import ServeRecord, client_url, recorded
from tokenmeter.serve.backend import open_quotas_and_store, start_backend
from tokenmeter.serve.config import ServeConfig
from tokenmeter.serve.servers import Servers, bind_sockets
from tokenmeter.server.interpreter_tuning import tune_when_ready
from tokenmeter.store import parse_store_url

if TYPE_CHECKING:
    from tokenmeter.store.client import StoreLocation


def run_serve(config: ServeConfig, ready: IO[str] = sys.stdout, progress: Callable[[str], None] = print) -> int:
    """Run until SIGTERM / SIGINT; returns the exit code."""
    return asyncio.run(_serve(config, ready, progress))


async def _serve(config: ServeConfig, ready: IO[str], progress: Callable[[str], None]) -> int:
    location = parse_store_url(config.clickhouse_url)
    sockets = bind_sockets(config)
    enforcer, reader = open_quotas_and_store(config, location, progress)
    api_token, api_token_source = access_tokens.api_token(config)
    backend = start_backend(config, location, enforcer, reader, progress)
    otlp_token, otlp_token_source = access_tokens.otlp_token(config)
    servers = await Servers.start(config, backend, api_token, otlp_token, sockets)
    stop = _stop_on_signals(enforcer)
    await servers.wait_started()

    addresses = servers.addresses()
    tune_when_ready()
    with _address_recorded(config, location, addresses["api"], api_token_source):
        ready.write(json.dumps({"event": "ready", **addresses, "store": location.display,
                                "api_token": api_token_source, "otlp_token": otlp_token_source}))  # fmt: skip
        ready.write("\n")
        ready.flush()
        progress(
            f"tokenmeter serve: OTLP gRPC {addresses['otlp_grpc']}, OTLP HTTP {addresses['otlp_http']}, "
            f"API {addresses['api']} (token: {api_token_source}); dashboard {addresses['api']}/"
        )
        access_tokens.say_otlp_token(config, otlp_token_source, progress)

        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *servers.tasks], return_when=asyncio.FIRST_COMPLETED)
    progress("tokenmeter serve: stopping; writing what is queued")
    # Receivers first (in-flight requests finish: they wait for their writes), then the queue.
    backend.queue.drain_now()
    await servers.stop()
    await backend.close()
    stopper.cancel()
    progress("tokenmeter serve: stopped")
    return 0


def _address_recorded(
    config: ServeConfig, location: StoreLocation, api: str, api_token_source: str
) -> contextlib.AbstractContextManager[object]:
    """The API's address beside the chDB directory's lock while serve runs, for `report` and `check` to find."""
    if location.kind != "chdb" or location.path is None:
        return contextlib.nullcontext()
    token_file = None if config.api_token is not None else Path(api_token_source)
    record = ServeRecord(os.getpid(), client_url(api), location.display, token_file)
    return recorded(location.path, record)


def _stop_on_signals(enforcer: EnforcerService) -> asyncio.Event:
    """Set on SIGTERM / SIGINT; SIGHUP reloads the quota policy."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, enforcer.request_reload)
    return stop
