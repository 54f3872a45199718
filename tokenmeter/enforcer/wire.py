"""The sidecar's JSON: what ``POST /v1/check`` takes and what a decision looks like.

Shared by the HTTP API, ``tokenmeter check`` and the tests, so the field names are
spelled once. Amounts of money are decimal strings; times are ISO 8601 in UTC.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmeter.enforcer.decision import Decision

_MAX_NAME = 1024  # longer user ids and model names are bad input, not a reason to run slow


class CheckBody(BaseModel):
    """One call about to be made. Unknown fields are ignored (newer clients may send more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user: str = Field(default="", max_length=_MAX_NAME)
    department: str = Field(default="", max_length=_MAX_NAME)
    app: str = Field(default="", max_length=_MAX_NAME)
    model: str = Field(min_length=1, max_length=_MAX_NAME)
    input_tokens: int = Field(default=0, ge=0, le=10**9)
    # The call's max_tokens; omitted: the policy's per-model default is reserved.
    max_output_tokens: int | None = Field(default=None, ge=0, le=10**9)
    # Decide without reserving (``tokenmeter check``, dashboards asking "what if").
    dry_run: bool = False
    # Calls the client let through since its last check because the enforcer was unreachable.
    client_fail_open: int = Field(default=0, ge=0, le=10**9)
    # The client's own id for this check: it releases by it when it gave up waiting for the answer.
    check_id: str | None = Field(default=None, min_length=1, max_length=64)
    # The client can decide calls locally from a lease (room held for several calls like this one).
    lease: bool = False


class ReleaseBody(BaseModel):
    """By ``reservation_id`` (from the answer: the call finished) or ``check_id`` (the client's, when the
    answer never came and the call did not run: whatever the check reserved is dropped at once)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reservation_id: str | None = Field(default=None, min_length=1, max_length=64)
    check_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Tokens of the reservation never spent (a lease's calls not made): freed at once.
    unused_tokens: int = Field(default=0, ge=0, le=10**12)
    # With check_id: the fail-opens the given-up check was reporting (counted if it never arrives).
    client_fail_open: int = Field(default=0, ge=0, le=10**9)

    @model_validator(mode="after")
    def _one_id(self) -> ReleaseBody:
        if (self.reservation_id is None) == (self.check_id is None):
            raise ValueError("give reservation_id or check_id")
        return self


def decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def decision_document(
    decision: Decision,
    reservation_id: str | None,
    *,
    timezone: str,
    stale: bool = False,
    lease: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``timezone``: the policy's, for showing ``resets_at`` as people there read clocks. ``lease``:
    ``calls``, ``seconds``, ``tokens``, ``default_output_tokens`` when the reservation holds room for
    that many calls like this one, which the app decides itself for that long, then releases the
    reservation with what went unused."""
    return {
        "decision": decision.action,
        "requested_model": decision.requested_model,
        "effective_model": decision.effective_model,
        "budget": decision.budget,
        "scope": decision.scope,
        "subject": decision.subject,
        "period": decision.period,
        "used_tokens": decision.used_tokens,
        "limit_tokens": decision.limit_tokens,
        "used_cost": decimal_text(decision.used_cost),
        "limit_cost": decimal_text(decision.limit_cost),
        "currency": decision.currency,
        "ratio": round(decision.ratio, 6),
        "threshold": decision.threshold,
        "resets_at": decision.resets_at.isoformat() if decision.resets_at else None,
        "timezone": timezone,
        "reason": decision.reason,
        "reservation_id": reservation_id,
        # True when the store could not be read lately: usage may be missing from the numbers.
        "stale": stale,
        "lease": lease,
    }
