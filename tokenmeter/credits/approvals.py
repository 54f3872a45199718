"""Top-up requests and their approvals, the pure core: who may act on a request, and what state it is in.

A request asks for ``amount`` credits (in the wallet's unit) for one subject's wallet. What happens
to it is a list of events (requested, approved, rejected, cancelled), each with an id, who acted,
the SSO groups they held then, and when. Its state is folded from those events, never stored:

- nobody approves or rejects their own request (the requester may cancel it while it is pending);
- an approval counts for the next level the request needs, and only from a member of that level's
  groups (``approvals.groups_for(subject, second_level=...)``);
- a request above ``second_level_above`` needs the first level, then the second, from two different
  people: who gave the first level cannot give the second, even as a member of both levels' groups;
- a reject by a member of any level's groups ends the request (with a comment saying why);
- nothing counts at or after ``expires_at``: a request still pending then is expired (derived from
  the clock, no event is recorded for it);
- an event sent twice (the same id and content) counts once; the same id with other content is
  refused; any action on a decided (approved, rejected, cancelled) or expired request is refused.

Events are folded in time order (``at``, then requested first, then event id), so a replay of the
same events in any order, with any repeats, gives the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Final, Literal, Protocol

from tokenmeter.credits.ledger import LedgerEntry
from tokenmeter.errors import TokenmeterError

EventKind = Literal["requested", "approved", "rejected", "cancelled"]
Status = Literal["pending", "approved", "rejected", "cancelled", "expired"]
# Why an action was refused: bad input, a person who may not do it, or a request that no longer takes it.
Problem = Literal["invalid", "forbidden", "decided", "expired", "conflict"]
DECIDED: Final = frozenset({"approved", "rejected", "cancelled"})
_KIND_ORDER: Final = {"requested": 0, "approved": 1, "rejected": 1, "cancelled": 1}


class ApprovalError(TokenmeterError, ValueError):
    """An action refused: the message names the request and why; ``problem`` says which kind of refusal."""

    def __init__(self, request_id: str, why: str, problem: Problem) -> None:
        super().__init__(f"top-up request {request_id!r}: {why}")
        self.request_id = request_id
        self.problem = problem


class ApprovalRules(Protocol):
    """Who approves a wallet's top-ups (the policy's ``approvals:``, :class:`~tokenmeter.enforcer.wallet_policy.
    Approvals`); a protocol, so the core needs no policy import."""

    def groups_for(self, subject: str, *, second_level: bool = False) -> tuple[str, ...]: ...

    def levels_for(self, amount: Decimal) -> int: ...


@dataclass(frozen=True, slots=True)
class TopUpRequest:
    request_id: str  # made by the requester's client (so a retried request is one request) or by the server
    account: str  # the ledger's wallet: wallet_account(wallet, subject)
    wallet: str
    subject: str
    amount: Decimal  # > 0, in the wallet's unit
    reason: str
    requester: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class RequestEvent:
    event_id: str
    request: TopUpRequest  # every event carries its request, so any one of them names it whole
    kind: EventKind
    actor: str  # the person (their SSO name)
    at: datetime
    actor_groups: tuple[str, ...] = ()  # the SSO groups the actor held when acting
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Approval:
    level: int  # 1, or 2 for the second level
    by: str
    at: datetime
    comment: str


@dataclass(frozen=True, slots=True)
class RequestState:
    request: TopUpRequest
    status: Status
    levels_needed: int
    approvals: tuple[Approval, ...] = ()
    ended_by: RequestEvent | None = None  # the final approval, the reject or the cancel
    counted: tuple[RequestEvent, ...] = field(default=(), repr=False)  # each counted event once

    @property
    def next_level(self) -> int | None:
        """The level an approval would give now; None when the request takes no more approvals."""
        return len(self.approvals) + 1 if self.status == "pending" else None


@dataclass(frozen=True, slots=True)
class Action:
    """What a person does to a request: approve, reject or cancel it, with the SSO groups they hold now."""

    kind: Literal["approved", "rejected", "cancelled"]
    actor: str
    actor_groups: tuple[str, ...] = ()
    comment: str = ""


def action_event(request: TopUpRequest, action: Action, at: datetime) -> RequestEvent:
    """The event of ``action`` at ``at``. Its id names the request, the action and the person: a person does each
    action to a request once, so the same click sent twice is one event."""
    event_id = f"{request.request_id}:{action.kind}:{action.actor}"
    return RequestEvent(event_id, request, action.kind, action.actor, at, action.actor_groups, action.comment)


def requested_event(request: TopUpRequest) -> RequestEvent:
    return RequestEvent(f"{request.request_id}:requested", request, "requested", request.requester, request.created_at)


def check_request(request: TopUpRequest) -> TopUpRequest:
    """The request, or ApprovalError (``invalid``) naming what is wrong with it."""
    problems = []
    if not request.request_id or not request.wallet or not request.account or not request.requester:
        problems.append("request_id, wallet and requester are required")
    if not request.amount.is_finite() or request.amount <= 0:
        problems.append(f"the amount must be a number above 0, not {request.amount}")
    if not request.reason.strip():
        problems.append("a reason is required (what the credits are for)")
    if request.created_at.tzinfo is None or request.expires_at.tzinfo is None:
        problems.append("times must carry a time zone")
    elif request.expires_at <= request.created_at:
        problems.append("expires_at must be after created_at")
    if problems:
        raise ApprovalError(request.request_id, "; ".join(problems), "invalid")
    return request


def opened(event: RequestEvent, rules: ApprovalRules) -> RequestState:
    """The state a ``requested`` event opens."""
    if event.kind != "requested" or event.actor != event.request.requester:
        raise ApprovalError(event.request.request_id, "a request is opened by its requester's requested event",
                            "invalid")  # fmt: skip
    check_request(event.request)
    return RequestState(event.request, "pending", rules.levels_for(event.request.amount), counted=(event,))


def apply_event(state: RequestState, event: RequestEvent, rules: ApprovalRules) -> RequestState:
    """The state after ``event``, or ApprovalError saying why it does not count. A repeat changes nothing."""
    request_id = state.request.request_id
    earlier = next((seen for seen in state.counted if seen.event_id == event.event_id), None)
    if earlier is not None:
        if earlier != event:
            raise ApprovalError(request_id, f"event {event.event_id!r} was recorded before with other content",
                                "conflict")  # fmt: skip
        return state
    if event.request != state.request:
        raise ApprovalError(request_id, f"event {event.event_id!r} names another request's content", "conflict")
    if state.status != "pending":
        raise ApprovalError(request_id, f"it is {state.status} already; nothing more can be done to it",
                            "expired" if state.status == "expired" else "decided")  # fmt: skip
    if event.at >= state.request.expires_at:
        raise ApprovalError(request_id, f"it expired at {state.request.expires_at.isoformat()} without a decision; "
                                        "ask again with a new request", "expired")  # fmt: skip
    if event.kind == "cancelled":
        return _cancelled(state, event)
    if event.kind == "rejected":
        return _rejected(state, event, rules)
    if event.kind == "approved":
        return _approved(state, event, rules)
    raise ApprovalError(request_id, f"event {event.event_id!r}: a request is opened only once", "conflict")


def _cancelled(state: RequestState, event: RequestEvent) -> RequestState:
    if event.actor != state.request.requester:
        raise ApprovalError(state.request.request_id, f"only its requester ({state.request.requester}) may cancel it",
                            "forbidden")  # fmt: skip
    return replace(state, status="cancelled", ended_by=event, counted=(*state.counted, event))


def _rejected(state: RequestState, event: RequestEvent, rules: ApprovalRules) -> RequestState:
    request = state.request
    _not_the_requester(request, event, "reject")
    levels = range(1, state.levels_needed + 1)
    allowed = tuple(group for level in levels for group in rules.groups_for(request.subject, second_level=level > 1))
    if not set(event.actor_groups) & set(allowed):
        raise ApprovalError(request.request_id, f"{event.actor} may not reject it: that takes a member of "
                                                f"{', '.join(allowed)}", "forbidden")  # fmt: skip
    if not event.comment.strip():
        raise ApprovalError(request.request_id, "a reject needs a comment saying why", "invalid")
    return replace(state, status="rejected", ended_by=event, counted=(*state.counted, event))


def _approved(state: RequestState, event: RequestEvent, rules: ApprovalRules) -> RequestState:
    request = state.request
    _not_the_requester(request, event, "approve")
    level = len(state.approvals) + 1
    if any(given.by == event.actor for given in state.approvals):
        raise ApprovalError(request.request_id, f"{event.actor} gave level {level - 1} already; level {level} "
                                                "takes another person", "forbidden")  # fmt: skip
    groups = rules.groups_for(request.subject, second_level=level > 1)
    if not set(event.actor_groups) & set(groups):
        raise ApprovalError(request.request_id, f"{event.actor} may not approve it at level {level} of "
                                                f"{state.levels_needed}: that takes a member of {', '.join(groups)}",
                            "forbidden")  # fmt: skip
    approvals = (*state.approvals, Approval(level, event.actor, event.at, event.comment))
    done = len(approvals) >= state.levels_needed
    return replace(state, status="approved" if done else "pending", approvals=approvals,
                   ended_by=event if done else None, counted=(*state.counted, event))  # fmt: skip


def _not_the_requester(request: TopUpRequest, event: RequestEvent, action: str) -> None:
    if event.actor == request.requester:
        raise ApprovalError(request.request_id, f"{event.actor} asked for it and may not {action} it "
                                                "(the requester may cancel it)", "forbidden")  # fmt: skip


def in_time_order(events: Iterable[RequestEvent]) -> list[RequestEvent]:
    return sorted(events, key=lambda event: (event.at, _KIND_ORDER[event.kind], event.event_id))


def fold(events: Iterable[RequestEvent], rules: ApprovalRules, now: datetime) -> RequestState:
    """A request's state at ``now`` from its recorded events; events the rules refuse do not count.

    Raises ApprovalError (``invalid``) when there is no requested event to open the request.
    """
    ordered = in_time_order(events)
    first = next((event for event in ordered if event.kind == "requested"), None)
    if first is None:
        request_id = ordered[0].request.request_id if ordered else "?"
        raise ApprovalError(request_id, "no requested event: the request was never made", "invalid")
    state = opened(first, rules)
    for event in ordered:
        try:
            state = apply_event(state, event, rules)
        except ApprovalError:
            continue  # refused when it was sent (or by today's rules): it does not count
    return as_of(state, now)


def as_of(state: RequestState, now: datetime) -> RequestState:
    """The state as seen at ``now``: a request still pending at its ``expires_at`` is expired."""
    if state.status == "pending" and now >= state.request.expires_at:
        return replace(state, status="expired")
    return state


def top_up_entry(state: RequestState, zone: tzinfo) -> LedgerEntry:
    """The ledger entry an approved request adds: usable from the final approval to the end of that calendar
    year in ``zone`` (the policy's time zone), recorded by the final approver."""
    final = state.ended_by
    if state.status != "approved" or final is None:
        raise ApprovalError(state.request.request_id, f"it is {state.status}, not approved: no top-up", "invalid")
    local = final.at.astimezone(zone)
    year_end = datetime(local.year + 1, 1, 1, tzinfo=zone)
    approvers = ", ".join(f"{given.by} (level {given.level})" for given in state.approvals)
    request = state.request
    return LedgerEntry(
        entry_id=f"top_up:{request.request_id}", wallet=request.account, kind="top_up", amount=request.amount,
        at=final.at, actor=final.actor, valid_until=year_end,
        reason=f"top-up request {request.request_id} by {request.requester}: {request.reason}; approved by {approvers}",
    )  # fmt: skip
