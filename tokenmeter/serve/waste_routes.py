"""``GET /v1/waste?period=&timezone=&cache_ttl=&retry_window=&top=&heavy_factor=&heavy_min_calls=&routing=&policy=``:
the waste report (docs/waste.md).

The answer is the document `tokenmeter report --waste --format json` prints
(:mod:`tokenmeter.waste.waste_report`), with the ``store`` that answered. The routing replay replays the routing
section of the policy serve enforces, or the one in ``routing`` (JSON: tiers, apps, critical_apps, rules; what
`tokenmeter report --waste --policy FILE` sends, ``policy`` naming the file), repriced at serve's model catalog.
Behind the API token: it reveals usage. 400 names a bad parameter, 503 a store that could not answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.routing.routing_policy import Routing
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.waste.routing_replay import ReplayPolicy
from tokenmeter.waste.waste_query import PARAMETERS, WasteQuery
from tokenmeter.web.routes import Handler

if TYPE_CHECKING:
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.enforcer.quota_service import EnforcerService

logger = logging.getLogger(__name__)

REPLAY_PARAMETERS: Final = ("routing", "policy")
SERVE_POLICY: Final = "the policy serve enforces"


def waste_routes(reader: StoreReader, guard: Callable[[Handler], Handler], enforcer: EnforcerService,
                 store_display: str) -> list[Route]:  # fmt: skip
    endpoint = WasteEndpoint(reader, enforcer, store_display)
    return [Route("/v1/waste", guard(endpoint.waste), methods=["GET"])]


class WasteEndpoint:
    def __init__(self, reader: StoreReader, enforcer: EnforcerService, store_display: str) -> None:
        self._reader = reader
        self._enforcer = enforcer
        self._store_display = store_display
        self._catalog: ModelCatalog | None = None

    async def waste(self, request: Request) -> Response:
        from tokenmeter.store.waste_queries import read_waste

        params = request.query_params
        unknown = sorted(set(params) - set(PARAMETERS) - set(REPLAY_PARAMETERS))
        if unknown:
            known = ", ".join((*PARAMETERS, *REPLAY_PARAMETERS))
            return _bad(f"unknown parameter {unknown[0]!r}; the parameters are {known}")
        try:
            query = WasteQuery.parse(**{name: params.get(name) for name in PARAMETERS})
            routing, label = self._routing(params.get("routing"), params.get("policy"))
        except ValueError as exc:
            return _bad(str(exc))

        def read(client: Any) -> dict[str, Any]:
            policy = None if routing is None else ReplayPolicy(routing, label, self._prices())
            note = "" if routing is not None else "the policy serve enforces has no routing section"
            return read_waste(client, query, policy, note).to_dict()

        try:
            document = await self._reader.run(read)
        except Exception:
            logger.exception("waste report failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return JSONResponse({**document, "store": self._store_display})  # which store answered, for the CLI

    def _routing(self, text: str | None, label: str | None) -> tuple[Routing | None, str]:
        """The routing section asked for (``routing``), else the enforced policy's; ValueError naming a bad one."""
        if not text:
            return self._enforcer.policy_file.loaded.policy.routing, SERVE_POLICY
        try:
            return Routing.model_validate(json.loads(text)), label or "the routing section sent"
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[:3]
            raise ValueError(f"routing: not a policy's routing section: {' '.join(first)}") from None

    def _prices(self) -> Callable[[str], Any]:
        """The model catalog's prices (TOKENMETER_MODELS and the built-in catalog), read once."""
        if self._catalog is None:
            from tokenmeter.catalog import ModelCatalog
            from tokenmeter.settings import get_settings

            self._catalog = ModelCatalog.load(get_settings().models)
        return self._catalog.price_for


def _bad(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)
