"""The HTTP API of `tokenmeter serve` (port 9400).

- ``GET /healthz``: 200 ``"status": "ok"`` when the store answers (a probe that reads
  stored data, and the enforcer's usage refresh), else 503 ``"status": "unavailable"``
  with the ``problems``; the store it writes to (no token: it reveals nothing about usage).
- ``GET /metrics``: the receiver's and the enforcer's metrics in the Prometheus text
  format. Bearer token required: quota utilisation is per user and department.
- ``GET /v1/report?by=&period=&at=&subject=``: a usage report, the document
  ``tokenmeter report --format json`` prints, with the ``store`` that answered. Bearer token required.
- ``GET /`` and ``/v1/dashboard...``: the web page and its data (:mod:`tokenmeter.web.routes`); the data
  endpoints need the API token.
- The enforcer's ``/v1/check``, ``/v1/release``, ``/v1/usage``, ``/v1/policy``, ``/v1/routing``
  (:mod:`tokenmeter.enforcer.http_api`): the API token or ``TOKENMETER_ENFORCER_TOKEN``.
- Credits (docs/credits.md), with the API token: top-up requests and their approval (and a person,
  :mod:`tokenmeter.serve.credit_routes`), the wallets' standing (``GET /v1/credits/wallets``), a
  department's monthly statement (``GET /v1/credits/statement``).
- Ratings and the model comparison (docs/compare.md), with the API token: ``POST /v1/feedback`` records a
  rating as one OTLP log record through the receiver's ingest queue (:mod:`tokenmeter.serve.feedback_routes`);
  ``GET /v1/compare`` answers ``tokenmeter compare --format json`` (:mod:`tokenmeter.serve.compare_routes`).
- The waste report (docs/waste.md), with the API token: ``GET /v1/waste`` answers ``tokenmeter report --waste
  --format json`` (:mod:`tokenmeter.serve.waste_routes`).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tokenmeter.collector.ingest_queue import IngestQueue
from tokenmeter.enforcer.check_path import CheckPath
from tokenmeter.enforcer.http_api import enforcer_routes, guarded
from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.serve.compare_routes import compare_routes
from tokenmeter.serve.credit_routes import credit_routes
from tokenmeter.serve.feedback_routes import feedback_routes
from tokenmeter.serve.statement_routes import statement_routes
from tokenmeter.serve.store_probe import StoreProbe
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.serve.wallet_routes import wallet_routes
from tokenmeter.serve.waste_routes import waste_routes
from tokenmeter.server.bearer import BearerToken
from tokenmeter.web.routes import Handler, web_routes

logger = logging.getLogger(__name__)

API_TOKEN_HINT: Final = "TOKENMETER_API_TOKEN, or the api-token file serve wrote"  # noqa: S105 - a hint, not a token
ENFORCER_TOKEN_HINT: Final = f"TOKENMETER_ENFORCER_TOKEN or {API_TOKEN_HINT}"


def api_app(
    *,
    queue: IngestQueue,
    reader: StoreReader,
    api_token: str,
    store_display: str,
    enforcer: EnforcerService,
    enforcer_token: str | None = None,
) -> CheckPath:
    """The route table: who may call what; checks and releases go to :class:`CheckPath` in front of it."""
    if not api_token:
        raise ValueError("the usage API needs a token")  # usage is never served without one
    api_bearer = BearerToken(api_token)
    any_bearer = BearerToken(api_token, enforcer_token)
    endpoints = ServeEndpoints(queue, reader, store_display, enforcer)

    def api_guard(handler: Handler) -> Handler:
        return guarded(api_bearer, API_TOKEN_HINT, handler)

    app = Starlette(
        routes=[
            Route("/healthz", endpoints.healthz, methods=["GET"]),
            Route("/metrics", guarded(any_bearer, ENFORCER_TOKEN_HINT, endpoints.metrics), methods=["GET"]),
            Route("/v1/report", api_guard(endpoints.report), methods=["GET"]),
            *enforcer_routes(enforcer, any_bearer, ENFORCER_TOKEN_HINT),
            *web_routes(reader, api_guard, queue.stats, enforcer),
            *credit_routes(reader, api_guard, enforcer),  # top-up requests: the API token and a person
            *wallet_routes(reader, api_guard, enforcer),
            *statement_routes(reader, api_guard, enforcer, store_display),
            *compare_routes(reader, api_guard, store_display),  # models by cost and rating (docs/compare.md)
            *feedback_routes(queue, api_guard),  # ratings in, through the ingest queue
            *waste_routes(reader, api_guard, enforcer, store_display),  # the waste report (docs/waste.md)
        ]
    )
    return CheckPath(app, enforcer, any_bearer, ENFORCER_TOKEN_HINT)


class ServeEndpoints:
    """serve's own endpoints: health, metrics and the usage report."""

    def __init__(self, queue: IngestQueue, reader: StoreReader, store_display: str, enforcer: EnforcerService) -> None:
        self._queue = queue
        self._reader = reader
        self._store_display = store_display
        self._enforcer = enforcer
        self._probe = StoreProbe(reader)

    async def healthz(self, _request: Request) -> Response:
        problems = self._enforcer.store_problems()
        probe_problem = await self._probe.problem()
        if probe_problem is not None:
            problems.insert(0, probe_problem)
        document = {
            "status": "unavailable" if problems else "ok",
            "problems": problems,
            "store": self._store_display,
            "queue_bytes": self._queue.pending_bytes,
            "quotas": self._enforcer.health(),
        }
        return JSONResponse(document, status_code=503 if problems else 200)

    async def metrics(self, _request: Request) -> Response:
        # On a worker thread: with thousands of subjects the budget gauges take 50-100 ms of Python,
        # which on the event loop would hold up every check meanwhile.
        text = self._queue.stats.render() + await run_in_threadpool(self._enforcer.render_metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def report(self, request: Request) -> Response:
        from tokenmeter.reporting import DEFAULT_LIMIT, build_usage_report, parse_day

        params = request.query_params
        try:
            at = parse_day(params.get("at"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        by, period, subject = params.get("by", "department"), params.get("period", "month"), params.get("subject")
        limit = params.get("limit", str(DEFAULT_LIMIT))
        if not limit.isdigit() or int(limit) < 1:
            return JSONResponse({"error": f"limit must be a whole number from 1, got {limit!r}"}, status_code=400)

        def read(client: Any) -> dict[str, Any]:
            return build_usage_report(client, by, period, at, subject=subject, limit=int(limit)).to_dict()

        try:
            document = await self._reader.run(read)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception:
            logger.exception("usage report failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return JSONResponse({**document, "store": self._store_display})  # which store answered, for the CLI
