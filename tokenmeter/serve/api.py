"""The HTTP API of `tokenmeter serve` (port 9400).

- ``GET /healthz``: liveness and the store it writes to (no token: it reveals nothing
  about usage).
- ``GET /metrics``: the receiver's own counters in the Prometheus text format (no
  token, for scrapers; no user data in it).
- ``GET /v1/usage?by=&period=&at=&subject=``: a usage report, the document
  ``tokenmeter report --format json`` prints. Bearer token required.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tokenmeter.collector.bearer import BearerToken
from tokenmeter.collector.ingest_queue import IngestQueue
from tokenmeter.serve.store_reader import StoreReader

logger = logging.getLogger(__name__)


def api_app(*, queue: IngestQueue, reader: StoreReader, api_token: str, store_display: str) -> Starlette:
    if not api_token:
        raise ValueError("the usage API needs a token")  # usage is never served without one
    bearer = BearerToken(api_token)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "store": store_display, "queue_bytes": queue.pending_bytes})

    async def metrics(_request: Request) -> Response:
        return PlainTextResponse(queue.stats.render(), media_type="text/plain; version=0.0.4")

    async def usage(request: Request) -> Response:
        if not bearer.allows(request.headers.get("authorization")):
            return JSONResponse(
                {"error": "missing or wrong bearer token (TOKENMETER_API_TOKEN, or the api-token file serve wrote)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        from tokenmeter.reporting import build_usage_report, parse_day

        params = request.query_params
        try:
            at = parse_day(params.get("at"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        by, period, subject = params.get("by", "department"), params.get("period", "month"), params.get("subject")

        def read(client: Any) -> dict[str, Any]:
            return build_usage_report(client, by, period, at, subject=subject).to_dict()

        try:
            document = await reader.run(read)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception:
            logger.exception("usage report failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return JSONResponse(document)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/usage", usage, methods=["GET"]),
        ]
    )
