"""``GET /v1/credits/wallets``: every wallet's standing this year, and when it runs out at its current rate.

Per (wallet budget, subject) the enforcer decides on: the credits used this year (charged and not yet
charged), reserved by calls in flight, this year's credits (the limit), what is left, and the projection
(:mod:`tokenmeter.credits.projection`) from the ledger's recent daily charges. Behind the API token
(it reveals usage); 503 when the store cannot answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.credits.projection import projection
from tokenmeter.credits.statement import decimal_text
from tokenmeter.enforcer.decision import BudgetUsage
from tokenmeter.enforcer.policy import Policy
from tokenmeter.enforcer.quota_service import EnforcerService
from tokenmeter.serve.store_reader import StoreReader
from tokenmeter.web.routes import Handler

logger = logging.getLogger(__name__)


def wallet_routes(reader: StoreReader, guard: Callable[[Handler], Handler], enforcer: EnforcerService) -> list[Route]:
    endpoint = WalletsEndpoint(reader, enforcer)
    return [Route("/v1/credits/wallets", guard(endpoint.wallets), methods=["GET"])]


class WalletsEndpoint:
    def __init__(self, reader: StoreReader, enforcer: EnforcerService) -> None:
        self._reader = reader
        self._enforcer = enforcer

    async def wallets(self, _request: Request) -> Response:
        from tokenmeter.store.credit_ledger import wallet_entries

        enforcer = self._enforcer.enforcer
        policy, now = enforcer.policy, enforcer.now()
        states = [state for state in enforcer.budget_states() if state.budget.wallet is not None]

        def read(client: Any) -> list[dict[str, Any]]:
            return [_standing(policy, state, wallet_entries(client, _account(policy, state)), now)
                    for state in states]  # fmt: skip

        try:
            rows = await self._reader.run(read)
        except Exception:
            logger.exception("wallet standings failed")
            return JSONResponse({"error": "the store could not answer; see the serve log"}, status_code=503)
        return JSONResponse({"timezone": policy.timezone, "wallets": rows})


def _account(policy: Policy, state: BudgetUsage) -> str:
    return policy.wallets_by_name[state.budget.wallet].account(state.subject)  # type: ignore[index]


def _standing(policy: Policy, state: BudgetUsage, entries: list[Any], now: Any) -> dict[str, Any]:
    wallet = policy.wallets_by_name[state.budget.wallet]  # type: ignore[index]
    key = wallet.cost_key
    used, reserved = state.used.cost.get(key, Decimal(0)), state.reserved.cost.get(key, Decimal(0))
    credits = state.limit.cost or Decimal(0)
    left = credits - used - reserved
    ahead = projection(entries, left, now.astimezone(policy.zone).date(), policy.zone)
    return {
        "wallet": wallet.name, "budget": state.budget.name, "scope": wallet.scope, "subject": state.subject,
        "account": wallet.account(state.subject), "unit": wallet.unit, "action": state.budget.action,
        "used": decimal_text(used), "reserved": decimal_text(reserved), "credits": decimal_text(credits),
        "available": decimal_text(left), "ratio": state.ratio,
        "daily_rate": decimal_text(ahead.daily_rate.quantize(Decimal("0.01"))), "days_left": ahead.days_left,
        "runs_out_on": ahead.runs_out_on.isoformat() if ahead.runs_out_on else None,
        "year_start": state.period_start.isoformat(), "resets_at": state.resets_at.isoformat(),
    }  # fmt: skip
