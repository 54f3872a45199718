"""serve's API for top-up requests: a department member asks for credits, approvers decide.

- ``POST /v1/credits/requests`` ``{"wallet", "subject", "amount", "reason", "request_id"?}``: a new request by
  the person acting (201; 200 when the same request id was sent before with the same ask).
- ``GET /v1/credits/requests?state=&wallet=&subject=``: the requests, newest first, each with its state, the
  levels it needs, who approved and who may act next. ``GET /v1/credits/requests/{id}``: one.
- ``POST /v1/credits/requests/{id}/approve`` ``{"comment"?}``, ``/reject`` ``{"comment"}`` (required), and
  ``/cancel`` (its requester only): 200 with the request (also when the same person's same action is sent again).

Every route needs the API token and a person (:mod:`tokenmeter.serve.people`); the rules are those of the
wallet's ``approvals:`` in the policy in force (:mod:`tokenmeter.credits.approvals`). Errors: 400 bad input,
401 no person, 403 a person who may not do it, 404 unknown request, 409 decided, expired or a reused id.
Expiry is derived from the clock when a request is read or acted on; no event is recorded for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenmeter.credits.approvals import Action, ApprovalError, ApprovalRules, fold, requested_event
from tokenmeter.credits.ledger import wallet_account
from tokenmeter.serve.credit_documents import STATES, BadRequestBodyError, NoApprovers, new_request, state_document
from tokenmeter.serve.people import HOW_TO_SEND_A_PERSON, Person, person_of
from tokenmeter.settings import Settings, get_settings
from tokenmeter.store.credit_requests import (
    UnknownRequestError,
    act_on,
    events_by_request,
    open_request,
    request_events,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from tokenmeter.enforcer.policy import Policy
    from tokenmeter.enforcer.quota_service import EnforcerService
    from tokenmeter.serve.store_reader import StoreReader

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
ACTIONS: Final = {"approve": "approved", "reject": "rejected", "cancel": "cancelled"}
_STATUS_OF_PROBLEM: Final = {"invalid": 400, "forbidden": 403, "decided": 409, "expired": 409, "conflict": 409}


def credit_routes(
    reader: StoreReader,
    guard: Callable[[Handler], Handler],
    enforcer: EnforcerService,
    settings: Settings | None = None,
) -> list[Route]:
    """Routes for serve's API app; ``guard`` wraps a handler with the API's bearer-token check."""
    desk = CreditRequests(reader, enforcer, settings or get_settings())
    return [
        Route("/v1/credits/requests", guard(desk.create), methods=["POST"]),
        Route("/v1/credits/requests", guard(desk.listing), methods=["GET"]),
        Route("/v1/credits/requests/{request_id}", guard(desk.one), methods=["GET"]),
        Route("/v1/credits/requests/{request_id}/{action}", guard(desk.act), methods=["POST"]),
    ]


class CreditRequests:
    """The endpoints; store work runs on the reader's thread, one action at a time."""

    def __init__(self, reader: StoreReader, enforcer: EnforcerService, settings: Settings) -> None:
        self._reader = reader
        self._enforcer = enforcer
        self._settings = settings

    @property
    def _policy(self) -> Policy:
        return self._enforcer.enforcer.policy  # the policy in force (reloaded when its file changes)

    def _person(self, request: Request) -> Person | None:
        return person_of(request.headers, request.client.host if request.client else None, self._settings)

    async def create(self, request: Request) -> Response:
        person = self._person(request)
        if person is None:
            return _no_person()
        policy, now = self._policy, datetime.now(UTC)
        try:
            asked = new_request(await _json_body(request), policy.wallets_by_name, person.name, now)
        except BadRequestBodyError as exc:
            return _error(str(exc), 400)
        rules = _rules(policy, asked.wallet)
        acted = await self._store(lambda client: open_request(client, requested_event(asked), rules, now))
        if isinstance(acted, Response):
            return acted
        return self._shown(acted.state, policy, 201 if acted.recorded else 200)

    async def listing(self, request: Request) -> Response:
        if self._person(request) is None:
            return _no_person()
        params, policy, now = request.query_params, self._policy, datetime.now(UTC)
        state, wallet, subject = params.get("state"), params.get("wallet"), params.get("subject")
        if state is not None and state not in STATES:
            return _error(f"state: one of {', '.join(STATES)}", 400)
        if subject is not None and wallet is None:
            return _error("subject: give wallet too (a subject names a wallet only with its wallet)", 400)
        account = wallet_account(wallet, subject) if wallet is not None and subject is not None else None
        found = await self._store(lambda client: events_by_request(client, wallet=wallet, account=account))
        if isinstance(found, Response):
            return found
        states = [fold(events, _rules(policy, events[0].request.wallet), now) for events in found.values()]
        shown = [s for s in states if state is None or s.status == state]
        shown.sort(key=lambda s: (s.request.created_at, s.request.request_id), reverse=True)
        wallets = policy.wallets_by_name
        return JSONResponse({"requests": [state_document(s, wallets.get(s.request.wallet)) for s in shown]})

    async def one(self, request: Request) -> Response:
        if self._person(request) is None:
            return _no_person()
        request_id, policy = request.path_params["request_id"], self._policy
        found = await self._store(lambda client: request_events(client, request_id))
        if isinstance(found, Response):
            return found
        if not found:
            return _error(f"no top-up request {request_id!r}", 404)
        return self._shown(fold(found, _rules(policy, found[0].request.wallet), datetime.now(UTC)), policy, 200)

    async def act(self, request: Request) -> Response:
        person = self._person(request)
        if person is None:
            return _no_person()
        request_id, kind = request.path_params["request_id"], ACTIONS.get(request.path_params["action"])
        if kind is None:
            return _error(f"no action {request.path_params['action']!r}: approve, reject or cancel", 404)
        body = await _json_body(request)
        comment = body.get("comment") if isinstance(body, dict) else None
        if comment is not None and not isinstance(comment, str):
            return _error("comment: a text", 400)
        action = Action(kind, person.name, person.groups, (comment or "").strip())  # type: ignore[arg-type]
        policy, now = self._policy, datetime.now(UTC)

        def decide(client: Client) -> Any:
            events = request_events(client, request_id)
            rules = _rules(policy, events[0].request.wallet) if events else NoApprovers()
            return act_on(client, request_id, action, rules, zone=policy.zone, now=now)

        acted = await self._store(decide)
        if isinstance(acted, Response):
            return acted
        if acted.state.status == "approved":
            self._enforcer.refresher.wake()  # the enforcer reads the top-up now, not at its next refresh
        return self._shown(acted.state, policy, 200)

    def _shown(self, state: Any, policy: Policy, status: int) -> Response:
        return JSONResponse(state_document(state, policy.wallets_by_name.get(state.request.wallet)), status_code=status)

    async def _store(self, work: Callable[[Client], Any]) -> Any:
        """``work``'s result, or the error response its refusal or failure gets."""
        try:
            return await self._reader.run(work)
        except ApprovalError as exc:
            return _error(str(exc), _STATUS_OF_PROBLEM[exc.problem])
        except UnknownRequestError as exc:
            return _error(str(exc), 404)
        except Exception:
            logger.exception("top-up request: the store failed")
            return _error("the store could not answer; see the serve log (an action sent again counts once)", 503)


def _rules(policy: Policy, wallet_name: str) -> ApprovalRules:
    wallet = policy.wallets_by_name.get(wallet_name)
    return wallet.approvals if wallet is not None and wallet.approvals is not None else NoApprovers()


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _no_person() -> Response:
    return _error(HOW_TO_SEND_A_PERSON, 401)


def _error(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status_code=status)
