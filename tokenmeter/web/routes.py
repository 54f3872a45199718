"""The dashboard page of `tokenmeter serve` and its data endpoints.

- ``GET /`` and ``GET /static/<file>``: the page (HTML, JavaScript, CSS shipped in the package;
  nothing loaded from elsewhere). No token: the page itself holds no data.
- ``GET /v1/dashboard``: the boards and panels the page draws.
- ``GET /v1/dashboard/filters``: the values of the department, user and model filters.
- ``GET /v1/dashboard/panels/{board}/{panel}?from=&to=&department=&user=&model=``: one panel's rows.
- ``GET /v1/dashboard/health``: the pipeline strip (last data, ingest rate, fail-open counts).

The data endpoints need the API's bearer token; the page asks for it once and keeps it in
the tab's session storage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.dashboards.macros import MacroError
from tokenmeter.web import panel_data

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.collector.receiver_stats import ReceiverStats
    from tokenmeter.enforcer.quota_service import EnforcerService
    from tokenmeter.serve.store_reader import StoreReader

logger = logging.getLogger(__name__)

STATIC_FILES: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "format.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "credits.js": "text/javascript; charset=utf-8",
}
# Everything from this origin only; no inline script; no framing.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}  # fmt: skip

Handler = Callable[[Request], Awaitable[Response]]


def _asset(name: str) -> bytes:
    return resources.files("tokenmeter.web").joinpath("static", name).read_bytes()


def web_routes(
    reader: StoreReader,
    guard: Callable[[Handler], Handler],
    receiver: ReceiverStats,
    enforcer: EnforcerService,
) -> list[Route]:
    """Routes for serve's API app; ``guard`` wraps a handler with the API's bearer-token check."""
    data = DashboardData(reader, receiver, enforcer)
    return [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/v1/dashboard", guard(boards), methods=["GET"]),
        Route("/v1/dashboard/filters", guard(data.filters), methods=["GET"]),
        Route("/v1/dashboard/panels/{board}/{panel}", guard(data.panel), methods=["GET"]),
        Route("/v1/dashboard/health", guard(data.health), methods=["GET"]),
    ]


async def page(_request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return JSONResponse({"error": f"no file {name!r}"}, status_code=404)
    return Response(_asset(name), media_type=media_type, headers=PAGE_HEADERS)


async def boards(_request: Request) -> Response:
    return JSONResponse(panel_data.catalog())


class DashboardData:
    """The endpoints that read the store or serve's counters: filters, panels and the pipeline strip."""

    def __init__(self, reader: StoreReader, receiver: ReceiverStats, enforcer: EnforcerService) -> None:
        self._reader = reader
        self._receiver = receiver
        self._enforcer = enforcer

    async def filters(self, _request: Request) -> Response:
        return _json(await _read(self._reader, panel_data.filter_values))

    async def panel(self, request: Request) -> Response:
        try:
            chosen = panel_data.find_panel(request.path_params["board"], request.path_params["panel"])
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        params = request.query_params
        try:
            query = panel_data.parse_panel_query(params, {name: params.getlist(name) for name in params})
        except panel_data.RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return _json(await _read(self._reader, lambda client: panel_data.run_panel(client, chosen, query)))

    async def health(self, _request: Request) -> Response:
        newest = await _read(self._reader, panel_data.last_usage_minute)
        if isinstance(newest, Response):
            return newest
        document: dict[str, Any] = {
            "now_ms": int(time.time() * 1000),
            "store_last_usage_ms": newest,
            "receiver": self._receiver.activity(),
            "fail_open": self._enforcer.stats.fail_open_totals(),
            "quotas": self._enforcer.health(),
            "budgets": len(self._enforcer.enforcer.policy.budgets),
        }
        return JSONResponse(document)


async def _read(reader: StoreReader, read: Callable[[Client], Any]) -> Any:
    """What ``read`` returns, or the error response to send instead."""
    try:
        result = await reader.run(read)
    except MacroError:
        logger.exception("a panel's SQL could not be expanded")
        return JSONResponse({"error": "this panel's query is broken; see the serve log"}, status_code=500)
    except Exception:
        logger.exception("dashboard query failed")
        return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
    return result


def _json(result: Any) -> Response:
    return result if isinstance(result, Response) else JSONResponse(result)
