"""The JSON of serve's top-up request API: what a new request must say, and how a request is shown."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from tokenmeter.credits.approvals import RequestState, TopUpRequest
from tokenmeter.credits.statement import decimal_text
from tokenmeter.enforcer.wallet_policy import Wallet

STATES: Final = ("pending", "approved", "rejected", "cancelled", "expired")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


class BadRequestBodyError(ValueError):
    """A request body that cannot be used; the message names the field and the fix."""


class NoApprovers:
    """The rules of a wallet that has no approvals in the policy (any more): nobody may approve or reject."""

    def groups_for(self, subject: str, *, second_level: bool = False) -> tuple[str, ...]:
        return ()

    def levels_for(self, amount: Decimal) -> int:
        return 1


def new_request(body: Any, wallets: dict[str, Wallet], requester: str, now: datetime) -> TopUpRequest:
    """The request a POST body asks for; BadRequestBodyError naming what is wrong."""
    if not isinstance(body, dict):
        raise BadRequestBodyError('send a JSON object: {"wallet": ..., "subject": ..., "amount": "...", "reason": ...}')
    wallet = wallets.get(str(body.get("wallet") or ""))
    if wallet is None:
        known = ", ".join(sorted(wallets)) or "none: the policy has no wallets"
        raise BadRequestBodyError(f"wallet: unknown wallet {body.get('wallet')!r} (the policy's wallets: {known})")
    if wallet.approvals is None:
        raise BadRequestBodyError(f"wallet: {wallet.name!r} has no approvals in the policy, so it takes no top-up "
                             "requests (finance adds credits to it by an adjustment)")  # fmt: skip
    request_id = str(body.get("request_id") or uuid.uuid4().hex)
    if not _REQUEST_ID.match(request_id):
        raise BadRequestBodyError("request_id: up to 100 letters, digits, '_', '.', ':' or '-' (or leave it out)")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise BadRequestBodyError("reason: say what the credits are for")
    subject = _subject(wallet, body.get("subject"))
    expires_at = now + timedelta(days=wallet.approvals.expire_after_days)
    return TopUpRequest(request_id, wallet.account(subject), wallet.name, subject, _amount(body.get("amount")),
                        reason.strip(), requester, now, expires_at)  # fmt: skip


def _subject(wallet: Wallet, given: object) -> str:
    if wallet.scope == "organisation":
        if given:
            raise BadRequestBodyError(f"subject: {wallet.name!r} is the organisation's wallet; leave subject out")
        return ""
    if wallet.subject is not None:
        if given not in (None, "", wallet.subject):
            raise BadRequestBodyError(f"subject: {wallet.name!r} is {wallet.subject!r}'s wallet, not {given!r}'s")
        return wallet.subject
    if not isinstance(given, str) or not given.strip():
        raise BadRequestBodyError(f"subject: which {wallet.scope}'s wallet of {wallet.name!r} the credits are for")
    return given.strip()


def _amount(given: object) -> Decimal:
    try:
        amount = Decimal(str(given)) if isinstance(given, str | int | float) and not isinstance(given, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        raise BadRequestBodyError(f'amount: a number above 0 in the wallet\'s unit, e.g. "5000" (got {given!r})')
    if -amount.as_tuple().exponent > 9:  # type: ignore[operator]
        raise BadRequestBodyError(f"amount: at most 9 decimal places (got {given!r})")
    return amount


def state_document(state: RequestState, wallet: Wallet | None) -> dict[str, Any]:
    """A request as the API shows it: what was asked, its state, the levels it needs and who approved."""
    request = state.request
    rules = wallet.approvals if wallet is not None else None
    next_level = state.next_level
    next_groups = rules.groups_for(request.subject, second_level=next_level > 1) if rules and next_level else ()
    ended = state.ended_by
    return {
        "id": request.request_id, "wallet": request.wallet, "subject": request.subject, "account": request.account,
        "amount": decimal_text(request.amount), "unit": wallet.unit if wallet is not None else None,
        "reason": request.reason, "requester": request.requester,
        "created_at": request.created_at.isoformat(), "expires_at": request.expires_at.isoformat(),
        "state": state.status, "levels_needed": state.levels_needed,
        "approvals": [{"level": given.level, "by": given.by, "at": given.at.isoformat(), "comment": given.comment}
                      for given in state.approvals],
        "next_level": next_level, "next_approvers": list(next_groups),
        "ended": None if ended is None else {"kind": ended.kind, "by": ended.actor, "at": ended.at.isoformat(),
                                             "comment": ended.comment},
    }  # fmt: skip
