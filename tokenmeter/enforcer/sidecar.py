"""Run `tokenmeter enforcer`: the quota sidecar on its own, against a shared store.

For production, where `tokenmeter serve` is replaced by otelcol-contrib and a ClickHouse
server: stateless replicas reading the aggregates. The schema is not changed here
(`tokenmeter db migrate` does that); start-up checks the tables it needs are there.
Prints one JSON "ready" line; SIGHUP reloads the policy; SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tokenmeter.enforcer.check_path import CheckPath
from tokenmeter.enforcer.http_api import enforcer_routes, guarded
from tokenmeter.enforcer.quota_service import EnforcerOptions, EnforcerService
from tokenmeter.server.bearer import BearerToken
from tokenmeter.server.interpreter_tuning import tune_when_ready

if TYPE_CHECKING:
    import socket

    import uvicorn
    from clickhouse_connect.driver.client import Client

    from tokenmeter.catalog import ModelCatalog

logger = logging.getLogger(__name__)

REQUIRED_TABLES = ("usage_counter_minutely", "quota_events", "quota_utilisation", "enforcer_replicas")


@dataclass(frozen=True)
class EnforcerConfig:
    clickhouse_url: str
    options: EnforcerOptions
    host: str = "127.0.0.1"
    port: int = 9400
    token: str | None = None  # TOKENMETER_ENFORCER_TOKEN; None: generated into token_file
    token_file: Path | None = None


def enforcer_app(service: EnforcerService, token: str) -> CheckPath:
    if not token:
        raise ValueError("the enforcer API needs a token")
    bearer = BearerToken(token)
    hint = "TOKENMETER_ENFORCER_TOKEN, or the token file the enforcer wrote"

    async def healthz(_request: Request) -> Response:
        # 503 when usage cannot be read: checks are then decided on an old snapshot (counted as fail-open).
        problems = service.store_problems()
        document = {"status": "unavailable" if problems else "ok", "problems": problems, **service.health()}
        return JSONResponse(document, status_code=503 if problems else 200)

    async def metrics(_request: Request) -> Response:
        # On a worker thread: the budget gauges of thousands of subjects must not hold up the checks.
        text = await run_in_threadpool(service.render_metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", guarded(bearer, hint, metrics), methods=["GET"]),
            *enforcer_routes(service, bearer, hint),
        ]
    )
    return CheckPath(app, service, bearer, hint)


def missing_tables(client: Client) -> list[str]:
    return [table for table in REQUIRED_TABLES if not client.command(f"EXISTS TABLE {table}")]


def run_enforcer(
    config: EnforcerConfig, catalog: ModelCatalog, ready: IO[str] = sys.stdout,
    progress: Callable[[str], None] = print,
) -> int:  # fmt: skip
    from tokenmeter.server.listening import bind_socket, quiet_uvicorn_server
    from tokenmeter.store import open_store, parse_store_url

    location = parse_store_url(config.clickhouse_url)
    sock = bind_socket(config.host, config.port, "the enforcer API", "--port")

    def open_client() -> Client:
        return open_store(config.clickhouse_url)

    _require_tables(open_client, location.display)
    token, token_source = _api_token(config)
    service = EnforcerService(open_client, config.options, catalog)
    service.start()
    server = quiet_uvicorn_server(enforcer_app(service, token))

    def announce(address: str) -> None:
        ready.write(json.dumps({"event": "ready", "api": address, "store": location.display, "token": token_source}))
        ready.write("\n")
        ready.flush()
        budgets = len(service.enforcer.policy.budgets)
        progress(f"tokenmeter enforcer: {address}, {budgets} budgets, store {location.display} (token: {token_source})")

    try:
        asyncio.run(_serve(server, sock, service, announce))
    finally:
        service.close()
    progress("tokenmeter enforcer: stopped")
    return 0


def _require_tables(open_client: Callable[[], Client], store: str) -> None:
    """ServerStartError unless the store has the tables the enforcer needs (it never migrates the schema)."""
    from tokenmeter.server.listening import ServerStartError

    probe = open_client()
    try:
        missing = missing_tables(probe)
    finally:
        probe.close()
    if missing:
        raise ServerStartError(
            f"store {store} has no {', '.join(missing)}: run `tokenmeter db migrate --clickhouse-url {store}` first"
        )


def _api_token(config: EnforcerConfig) -> tuple[str, str]:
    """The token the API takes, and where it comes from (for the ready line)."""
    from tokenmeter.server.tokens import load_or_create_api_token

    if config.token:
        return config.token, "TOKENMETER_ENFORCER_TOKEN"
    token, path = load_or_create_api_token(path=config.token_file)
    return token, str(path)


async def _serve(server: uvicorn.Server, sock: socket.socket, service: EnforcerService,
                 announce: Callable[[str], None]) -> None:  # fmt: skip
    """Serve until SIGTERM / SIGINT (SIGHUP reloads the policy); ``announce`` the address once listening."""
    from tokenmeter.server.listening import socket_address

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    address = f"http://{socket_address(sock)}"
    tune_when_ready()
    announce(address)
    await task
