"""Top-up requests in the store (``credit_request_events``): record an event once, read a request's events,
and act on a request: judge the action by the rules, record it, and when it approves the request, record
the top-up in the credits ledger.

Append-only: nothing here updates or deletes a row. A request's state is folded from its events each
time (:mod:`tokenmeter.credits.approvals`). An action is judged against the events recorded so far and
written only if it counts, so what is stored is what counted. The top-up's ledger entry is named after the
request (``top_up:<request id>``) and recorded idempotently, so an approval sent twice, or retried after
a crash between its two writes, adds the credits once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.credits.approvals import (
    Action,
    ApprovalError,
    ApprovalRules,
    RequestEvent,
    RequestState,
    TopUpRequest,
    action_event,
    apply_event,
    as_of,
    check_request,
    fold,
    opened,
    top_up_entry,
)
from tokenmeter.store.credit_ledger import record_entry

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

TABLE: Final = "credit_request_events"
_COLUMNS: Final = ("account", "request_id", "event_id", "kind", "wallet", "subject", "amount", "reason", "requester",
                   "created_at", "expires_at", "actor", "actor_groups", "comment", "at")  # fmt: skip
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}"  # noqa: S608 - constants
_PLACES: Final = 9  # amount is Decimal(38, 9)
# One action at a time in this process: judging against the recorded events and writing is not atomic.
_ACT_LOCK = threading.RLock()


class UnknownRequestError(LookupError):
    """No top-up request with this id is recorded."""


@dataclass(frozen=True, slots=True)
class Acted:
    """What an action did: the request's state after it, and whether the event was new (False: a repeat)."""

    state: RequestState
    recorded: bool
    top_up_recorded: bool = False  # this action wrote the ledger's top-up entry


def record_event(client: Client, event: RequestEvent, now: datetime | None = None) -> bool:
    """Write ``event`` unless it is there already: True if written, False if recorded before (the same).

    Raises ApprovalError for an id recorded before with other content, or a bad request.
    """
    check_request(event.request)
    if -event.request.amount.as_tuple().exponent > _PLACES:  # type: ignore[operator]
        raise ApprovalError(event.request.request_id, f"the store keeps {_PLACES} decimal places, "
                                                      f"{event.request.amount} has more", "invalid")  # fmt: skip
    with _ACT_LOCK:
        before = [seen for seen in request_events(client, event.request.request_id) if seen.event_id == event.event_id]
        if before:
            if before[0] != event:
                raise ApprovalError(event.request.request_id, f"event {event.event_id!r} was recorded before with "
                                                              "other content", "conflict")  # fmt: skip
            return False
        client.insert(TABLE, [[*_row(event), (now or datetime.now(UTC)).astimezone(UTC)]],
                      column_names=[*_COLUMNS, "recorded_at"])  # fmt: skip
    return True


def request_events(client: Client, request_id: str) -> list[RequestEvent]:
    """The events of one request as recorded, in time order (empty: no such request)."""
    return _events(client, "request_id = {request_id:String}", {"request_id": request_id})


def events_by_request(
    client: Client, *, wallet: str | None = None, account: str | None = None
) -> dict[str, list[RequestEvent]]:
    """Every request's events (of one wallet, or one subject's wallet ``account``, when given), by request id."""
    conditions, parameters = ["1"], {}
    if wallet is not None:
        conditions.append("wallet = {wallet:String}")
        parameters["wallet"] = wallet
    if account is not None:
        conditions.append("account = {account:String}")
        parameters["account"] = account
    found: dict[str, list[RequestEvent]] = {}
    for event in _events(client, " AND ".join(conditions), parameters):
        found.setdefault(event.request.request_id, []).append(event)
    return found


def open_request(client: Client, event: RequestEvent, rules: ApprovalRules, now: datetime) -> Acted:
    """Record a new request (its ``requested`` event). The same ask sent again under its id is a repeat.

    Raises ApprovalError for a bad request, or an id that names another request already.
    """
    with _ACT_LOCK:
        recorded = request_events(client, event.request.request_id)
        asked = next((seen for seen in recorded if seen.kind == "requested"), None)
        if asked is None:
            state = opened(event, rules)
            record_event(client, event, now)
            return Acted(as_of(state, now), recorded=True)
    if not _same_ask(asked.request, event.request):
        raise ApprovalError(event.request.request_id, f"this id names another request already ({asked.request.amount} "
                                                      f"for {asked.request.account} by {asked.request.requester}); "
                                                      "use a new request id", "conflict")  # fmt: skip
    return Acted(fold(recorded, rules, now), recorded=False)


def act_on(
    client: Client, request_id: str, action: Action, rules: ApprovalRules, *, zone: tzinfo, now: datetime
) -> Acted:
    """Judge ``action`` against the request's recorded events, record it if it counts, and record the top-up when it
    approves the request. The same person's same action again is a repeat: nothing new is recorded (the top-up is
    recorded if a crash kept it from being recorded the first time).

    Raises UnknownRequestError for a request never made, ApprovalError when the action does not count.
    """
    with _ACT_LOCK:
        recorded = request_events(client, request_id)
        if not recorded:
            raise UnknownRequestError(f"no top-up request {request_id!r}")
        state = fold(recorded, rules, now)
        event = action_event(state.request, action, now)
        if any(seen.event_id == event.event_id for seen in recorded):
            return Acted(state, recorded=False, top_up_recorded=_top_up(client, state, zone))
        after = as_of(apply_event(state, event, rules), now)
        record_event(client, event, now)
        return Acted(after, recorded=True, top_up_recorded=_top_up(client, after, zone))


def _same_ask(first: TopUpRequest, again: TopUpRequest) -> bool:
    """A request sent again: the same ask by the same person (its times are those of the first)."""
    return (first.account, first.amount, first.reason, first.requester) == (
        again.account, again.amount, again.reason, again.requester,
    )  # fmt: skip


def _top_up(client: Client, state: RequestState, zone: tzinfo) -> bool:
    return state.status == "approved" and record_entry(client, top_up_entry(state, zone))


def _events(client: Client, condition: str, parameters: dict[str, Any]) -> list[RequestEvent]:
    sql = f"{_SELECT} WHERE {condition} ORDER BY at, event_id"
    return [_event(row) for row in client.query(sql, parameters=parameters).result_rows]


def _row(event: RequestEvent) -> list[object]:
    request = event.request
    return [request.account, request.request_id, event.event_id, event.kind, request.wallet, request.subject,
            request.amount, request.reason, request.requester, request.created_at.astimezone(UTC),
            request.expires_at.astimezone(UTC), event.actor, list(event.actor_groups), event.comment,
            event.at.astimezone(UTC)]  # fmt: skip


def _event(row: tuple[Any, ...] | list[Any]) -> RequestEvent:
    (account, request_id, event_id, kind, wallet, subject, amount, reason, requester, created_at, expires_at, actor,
     actor_groups, comment, at) = row  # fmt: skip
    request = TopUpRequest(str(request_id), str(account), str(wallet), str(subject), Decimal(amount), str(reason),
                           str(requester), _utc(created_at), _utc(expires_at))  # fmt: skip
    return RequestEvent(str(event_id), request, kind, str(actor), _utc(at), tuple(map(str, actor_groups)), str(comment))


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
