"""The quota API's JSON, spelled once for both sides: what an app sends to ``POST /v1/check`` and
``POST /v1/release``, and the decision document it gets back.

The enforcer validates requests with these models and builds its answers with
:class:`DecisionDocument`; the app's client builds its requests with them and reads the answer
with it. Unknown fields are ignored both ways (either side may be newer). Amounts of money are
decimal strings; times are ISO 8601.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

DecisionAction = Literal["allow", "warn", "downgrade", "degrade", "deny"]
DECISIONS: Final = frozenset({"allow", "warn", "downgrade", "degrade", "deny"})

_MAX_NAME = 1024  # longer user ids and model names are bad input, not a reason to run slow


class RouteFeatures(BaseModel):
    """What the app knows of a chat call's question before it is made, for the policy's routing rules
    (docs/routing.md). Never the text: only what the app measured or classified locally."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    intent: str | None = Field(default=None, max_length=64)  # the app's intent classifier's label; None: unknown
    question_chars: int = Field(default=0, ge=0, le=10**9)  # the last user message's length in characters
    depth: int = Field(default=0, ge=0, le=10**6)  # user turns in the request (1: a first question)
    passages: int | None = Field(default=None, ge=0, le=10**6)  # retrieved passages in the prompt; None: not reported
    top_score: float | None = Field(default=None, allow_inf_nan=False)  # the best passage's score; None: not reported
    app_route: str | None = Field(default=None, max_length=256)  # the app's HTTP route, e.g. /chat/kb_chat


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
    # A chat call's question features, for routing rules (None: the client sends none; no rule looks at them).
    route: RouteFeatures | None = None


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


class LeaseTerms(BaseModel):
    """Room held for several calls like the one checked: the app decides them itself for ``seconds``,
    then releases the reservation with what went unused."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    calls: int
    seconds: float
    tokens: int  # in all: calls x this call's estimate
    default_output_tokens: int  # the output estimate of a call of this model that gives no max_tokens


class DecisionDocument(BaseModel):
    """The answer to ``POST /v1/check``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    decision: DecisionAction
    requested_model: str = ""  # empty: the model the app asked about
    effective_model: str = ""
    budget: str | None = None
    scope: str | None = None
    subject: str | None = None
    period: str | None = None
    used_tokens: int = 0
    limit_tokens: int | None = None
    used_cost: str | None = None
    limit_cost: str | None = None
    currency: str | None = None
    ratio: float = 0.0
    threshold: float | None = None  # the warning threshold crossed
    resets_at: datetime | None = None
    timezone: str | None = None  # the policy's: resets_at as people there read clocks
    reason: str = ""
    reservation_id: str | None = None
    stale: bool = False  # the store could not be read lately: usage may be missing from the numbers
    lease: LeaseTerms | None = None
    # The call is in this experiment of the policy, in this arm ("control" | "candidate"); in the candidate
    # arm effective_model is the candidate (unless a budget's downgrade routed it on). None: in none.
    experiment: str | None = None
    experiment_arm: str | None = None
    # The policy's routing rule that chose the model and its tier (docs/routing.md); effective_model is the
    # tier's model unless a budget's downgrade routed it on. None: no rule routed the call.
    route_rule: str | None = None
    route_tier: str | None = None
    # The enforcer's routing document (GET /v1/routing: intents and classifier) by version; None: the policy
    # has no routing. A client holding another version fetches it again.
    routing_version: str | None = None

    @field_serializer("resets_at")
    def _iso(self, value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()  # "+00:00", as Python writes it, not "Z"


def wire_json(body: BaseModel) -> dict[str, Any]:
    """A request as the JSON object sent (fields that are None are left out: the same to the reader)."""
    return body.model_dump(mode="json", exclude_none=True)


def wire_bytes(body: BaseModel) -> bytes:
    return body.model_dump_json(exclude_none=True).encode()
