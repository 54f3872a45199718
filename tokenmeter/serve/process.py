"""Run `tokenmeter serve`: check the config, migrate the store, then OTLP gRPC + HTTP receivers and the API.

Start-up binds every socket first, so a port in use is one clear error before anything
runs. When ready, one JSON line on stdout names the bound addresses (ports given as 0
are picked by the OS; tests use that). SIGTERM / SIGINT stop the receivers from taking
new requests, let in-flight ones finish, write everything queued, then exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tokenmeter.collector.limits import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_WRITERS,
)
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.server.body_deadline import DEFAULT_BODY_TIMEOUT_SECONDS
from tokenmeter.server.interpreter_tuning import tune_when_ready
from tokenmeter.server.listening import (
    ServerStartError,
    bind_socket,
    is_loopback_address,
    quiet_uvicorn_server,
    socket_address,
)
from tokenmeter.server.tokens import load_or_create_api_token, load_or_create_token, otlp_token_path

if TYPE_CHECKING:
    import grpc
    from clickhouse_connect.driver.client import Client

    from tokenmeter.serve.store_reader import StoreReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    clickhouse_url: str
    host: str = "127.0.0.1"
    otlp_grpc_port: int = 4317
    otlp_http_port: int = 4318
    api_port: int = 9400
    api_token: str | None = None
    otlp_token: str | None = None
    raw_ttl_days: int = 30
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    batch_bytes: int = DEFAULT_BATCH_BYTES
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    writers: int = DEFAULT_WRITERS
    token_dir: Path | None = None  # where the generated API token is written; default: the data dir
    # Quotas: /v1/check etc. on the API port. Without a policy file every check is allowed.
    enforcer: EnforcerOptions = field(default_factory=EnforcerOptions)
    # Accepted on the enforcer's endpoints besides the API token (the apps' token).
    enforcer_token: str | None = None
    # A request body (OTLP/HTTP, API) must arrive within this many seconds; else 408.
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS
    # gRPC connections are closed after this long (+ body_timeout for calls in flight); clients reconnect.
    grpc_max_connection_age: float = DEFAULT_GRPC_MAX_CONNECTION_AGE_SECONDS


def run_serve(config: ServeConfig, ready: IO[str] = sys.stdout, progress: Callable[[str], None] = print) -> int:
    """Run until SIGTERM / SIGINT; returns the exit code."""
    return asyncio.run(_serve(config, ready, progress))


async def _serve(config: ServeConfig, ready: IO[str], progress: Callable[[str], None]) -> int:
    from tokenmeter.collector.counter_guard import CounterGuard
    from tokenmeter.collector.grpc_receiver import otlp_grpc_server
    from tokenmeter.collector.http_receiver import otlp_http_app
    from tokenmeter.collector.ingest_queue import IngestQueue, IngestSchema
    from tokenmeter.serve.api import api_app
    from tokenmeter.serve.store_reader import StoreReader
    from tokenmeter.store import open_store, parse_store_url

    location = parse_store_url(config.clickhouse_url)
    sockets = {
        "grpc": bind_socket(config.host, config.otlp_grpc_port, "OTLP/gRPC", "--otlp-grpc-port"),
        "http": bind_socket(config.host, config.otlp_http_port, "OTLP/HTTP", "--otlp-http-port"),
        "api": bind_socket(config.host, config.api_port, "the API", "--api-port"),
    }

    def open_client() -> Client:
        return open_store(config.clickhouse_url)

    # Config before the store: a broken policy or model catalog leaves a new store uncreated.
    enforcer = _enforcer_service(config, open_client)
    reader = StoreReader(open_client)
    _migrate(reader, config, location.display, progress)
    api_token, token_source = _api_token(config)
    _start_enforcer(enforcer, config, progress)
    queue = IngestQueue(
        open_client,
        IngestSchema.for_store(embedded=location.kind == "chdb"),
        max_pending_bytes=config.max_pending_bytes,
        batch_bytes=config.batch_bytes,
        flush_interval=config.flush_interval,
        writers=config.writers,
    )
    queue.start()

    otlp_token, otlp_token_source = _otlp_token(config)
    guard = CounterGuard()  # one for both transports: a series is screened alike on either
    grpc_server = otlp_grpc_server(queue, token=otlp_token, max_request_bytes=config.max_request_bytes, guard=guard,
                                   max_connection_age=config.grpc_max_connection_age,
                                   connection_grace=config.body_timeout)  # fmt: skip
    grpc_address = await _start_grpc(grpc_server, sockets.pop("grpc"))
    http_server = quiet_uvicorn_server(
        otlp_http_app(queue, token=otlp_token, max_request_bytes=config.max_request_bytes, guard=guard),
        config.body_timeout,
    )
    api_server = quiet_uvicorn_server(
        api_app(
            queue=queue,
            reader=reader,
            api_token=api_token,
            store_display=location.display,
            enforcer=enforcer,
            enforcer_token=config.enforcer_token,
        ),
        config.body_timeout,
    )
    tasks = [
        asyncio.create_task(http_server.serve(sockets=[sockets["http"]])),
        asyncio.create_task(api_server.serve(sockets=[sockets["api"]])),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, enforcer.request_reload)
    while not (http_server.started and api_server.started) and not any(task.done() for task in tasks):
        await asyncio.sleep(0.01)

    addresses = {
        "otlp_grpc": grpc_address,
        "otlp_http": f"http://{socket_address(sockets['http'])}",
        "api": f"http://{socket_address(sockets['api'])}",
    }
    tune_when_ready()
    ready.write(json.dumps({"event": "ready", **addresses, "store": location.display, "api_token": token_source,
                            "otlp_token": otlp_token_source}))  # fmt: skip
    ready.write("\n")
    ready.flush()
    progress(
        f"tokenmeter serve: OTLP gRPC {addresses['otlp_grpc']}, OTLP HTTP {addresses['otlp_http']}, "
        f"API {addresses['api']} (token: {token_source}); dashboard {addresses['api']}/"
    )
    _say_otlp_token(config, otlp_token_source, progress)

    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    progress("tokenmeter serve: stopping; writing what is queued")
    # Receivers first (in-flight requests finish: they wait for their writes), then the queue.
    queue.drain_now()
    await grpc_server.stop(grace=10)
    http_server.should_exit = True
    api_server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.run_in_executor(None, queue.close)
    await loop.run_in_executor(None, enforcer.close)
    reader.close()
    stopper.cancel()
    progress("tokenmeter serve: stopped")
    return 0


def _migrate(reader: StoreReader, config: ServeConfig, display: str, progress: Callable[[str], None]) -> None:
    from tokenmeter.store.migrations import RenderOptions, migrate

    progress(f"store {display}: applying migrations")
    options = RenderOptions(raw_ttl_days=config.raw_ttl_days)
    result = reader.call(lambda client: migrate(client, options, progress=progress))
    progress(f"store ready ({len(result.applied)} migrations applied, {len(result.already_applied)} already there)")


def _enforcer_service(config: ServeConfig, open_client: Callable[[], Client]) -> EnforcerService:
    """The enforcer with its policy and the model catalog loaded; touches no store (ServerStartError when broken)."""
    from tokenmeter.catalog import CatalogError, ModelCatalog
    from tokenmeter.enforcer.coordination import CoordinationError
    from tokenmeter.enforcer.policy import PolicyError
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


def _otlp_token(config: ServeConfig) -> tuple[str | None, str | None]:
    """The token the OTLP receivers require and where it came from (None: no token, loopback only).

    On loopback every local process may report usage (the default, so apps work unconfigured on one
    machine); beyond it, serve never listens without a token: it makes one unless one is set.
    """
    if config.otlp_token is not None:
        return config.otlp_token, "TOKENMETER_OTLP_TOKEN"
    if is_loopback_address(config.host):
        return None, None
    token, path = load_or_create_token(otlp_token_path(config.token_dir))
    return token, str(path)


def _say_otlp_token(config: ServeConfig, source: str | None, progress: Callable[[str], None]) -> None:
    if source is None:
        progress("OTLP receivers take no token: any process on this machine can report usage (docs/serve.md, "
                 "'Who can write usage'; set TOKENMETER_OTLP_TOKEN to close that)")  # fmt: skip
    elif config.otlp_token is None:
        progress(f"OTLP receivers require the bearer token in {source} (serve listens beyond loopback): "
                 "apps send it with OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>")  # fmt: skip


def _api_token(config: ServeConfig) -> tuple[str, str]:
    """The API token and where it came from (for the ready line; never the token itself)."""
    if config.api_token is not None:
        return config.api_token, "TOKENMETER_API_TOKEN"
    token, path = load_or_create_api_token(config.token_dir)
    return token, str(path)


async def _start_grpc(server: grpc.aio.Server, probe: socket.socket) -> str:
    # grpc binds by address; the probe socket proved the port free (and picked one for port 0).
    address = socket_address(probe)
    probe.close()
    port = server.add_insecure_port(address)
    if port == 0:
        raise ServerStartError(f"cannot listen for OTLP/gRPC on {address}; choose another port with --otlp-grpc-port")
    await server.start()
    return f"{address.rsplit(':', 1)[0]}:{port}"
