"""``GET /v1/compare?period=&timezone=&app=&models=a,b&experiment=&min_ratings=&margin=``: models compared by cost
and by their users' ratings (docs/compare.md).

The answer is the document `tokenmeter compare --format json` prints
(:mod:`tokenmeter.comparison.comparison_document`), with the ``store`` that answered. Behind the API token: it
reveals usage. 400 names a bad parameter, 503 a store that could not answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.comparison.comparison_query import ComparisonQuery
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.web.routes import Handler

logger = logging.getLogger(__name__)

PARAMETERS: Final = ("period", "timezone", "app", "models", "experiment", "min_ratings", "margin")


def compare_routes(reader: StoreReader, guard: Callable[[Handler], Handler], store_display: str) -> list[Route]:
    endpoint = CompareEndpoint(reader, store_display)
    return [Route("/v1/compare", guard(endpoint.compare), methods=["GET"])]


class CompareEndpoint:
    def __init__(self, reader: StoreReader, store_display: str) -> None:
        self._reader = reader
        self._store_display = store_display

    async def compare(self, request: Request) -> Response:
        from tokenmeter.store.rating_queries import read_comparison

        params = request.query_params
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            return _bad(f"unknown parameter {unknown[0]!r}; the parameters are {', '.join(PARAMETERS)}")
        try:
            query = ComparisonQuery.parse(**{name: params.get(name) for name in PARAMETERS})
        except ValueError as exc:
            return _bad(str(exc))

        def read(client: Any) -> dict[str, Any]:
            return read_comparison(client, query).to_dict()

        try:
            document = await self._reader.run(read)
        except Exception:
            logger.exception("model comparison failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return JSONResponse({**document, "store": self._store_display})  # which store answered, for the CLI


def _bad(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
