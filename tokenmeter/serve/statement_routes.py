"""``GET /v1/credits/statement?department=&month=YYYY-MM&format=csv|html|json``: a department's monthly credits
statement (:mod:`tokenmeter.credits.statement`), with the wallets and time zone of the policy serve enforces.

Behind the API token. 400 names a bad parameter (or a wallet without a rate for a priced currency), 503 a store
that could not answer. The ``x-tokenmeter-store`` header (percent-encoded) says which store answered, so
`tokenmeter statement` can tell it asked the serve holding the store it meant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.credits.statement import StatementMonth
from tokenmeter.credits.statement_renderings import render_csv, render_html, render_json
from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.web.routes import Handler

logger = logging.getLogger(__name__)


STORE_HEADER: Final = "x-tokenmeter-store"
_RENDERINGS: Final = {
    "csv": (render_csv, "text/csv; charset=utf-8"),
    "html": (render_html, "text/html; charset=utf-8"),
    "json": (render_json, "application/json"),
}


def statement_routes(
    reader: StoreReader, guard: Callable[[Handler], Handler], enforcer: EnforcerService, store_display: str
) -> list[Route]:
    endpoint = StatementEndpoint(reader, enforcer, store_display)
    return [Route("/v1/credits/statement", guard(endpoint.statement), methods=["GET"])]


class StatementEndpoint:
    def __init__(self, reader: StoreReader, enforcer: EnforcerService, store_display: str) -> None:
        self._reader = reader
        self._enforcer = enforcer
        self._store_header = {STORE_HEADER: quote(store_display, safe=":/@")}

    async def statement(self, request: Request) -> Response:
        from tokenmeter.store.statement_queries import read_statement

        params = request.query_params
        department, form = params.get("department"), params.get("format", "json")
        if not department:
            return _bad("department is required, e.g. ?department=研发部&month=2026-11")
        if form not in _RENDERINGS:
            return _bad(f"format must be one of {', '.join(_RENDERINGS)}, got {form!r}")
        policy = self._enforcer.policy_file.loaded.policy
        try:
            month = StatementMonth.parse(params.get("month", ""), policy.zone)
        except ValueError as exc:
            return _bad(str(exc))

        def read(client: Any) -> str:
            statement = read_statement(client, department, month, policy.wallets, datetime.now(UTC))
            return _RENDERINGS[form][0](statement)

        try:
            text = await self._reader.run(read)
        except ValueError as exc:  # a wallet without a rate for a currency the usage was priced in
            return _bad(str(exc))
        except Exception:
            logger.exception("credits statement failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return Response(text, media_type=_RENDERINGS[form][1], headers=self._store_header)


def _bad(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
