"""The cost of the LLM calls one request made, for its ``X-Tokenmeter-Cost`` response header (opt-in).

The identity middleware collects, per request (:func:`collecting_costs`), the calls started inside it
(tasks and worker threads the request starts included; a hop's call is left out: the call it forwards is
billed where it is served). A call is billed on the background finisher just after it returns, so when the
response starts the middleware waits, a bounded while, for the bills of the calls that had finished by
then, and says what they cost::

    X-Tokenmeter-Cost: 0.000123 CNY
    X-Tokenmeter-Cost: 0.000123 CNY, 0.0004 USD, 0.002 CNY virtual, unpriced

one amount per currency (a virtual price apart), exact (never rounded, never an exponent), then
``unpriced`` if a call's model has no price and ``pending`` if a bill was not ready in time. A call still
running when the headers go (a streamed answer's) is not in it: its cost is not known yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from tokenmeter.pricing import Cost

if TYPE_CHECKING:
    from tokenmeter.instrumentation.llm_call import LLMCall

COST_HEADER: Final = b"x-tokenmeter-cost"
# How long the response may wait for the bills of finished calls (the finisher bills within milliseconds;
# a backlog must not hold a response up for long: past this the header says "pending").
BILL_WAIT_SECONDS: Final = 0.5
_POLL_SECONDS: Final = 0.002
_UNPRICED: Final = "unpriced"
_PENDING: Final = "pending"


class RequestCosts:
    """The calls one request started and, as the finisher bills them, their costs. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[LLMCall] = []
        self._costs: dict[int, Cost | None] = {}  # id(call) -> its cost; None: nothing billed

    def started(self, call: LLMCall) -> None:
        with self._lock:
            self._calls.append(call)

    def billed(self, call: LLMCall, cost: Cost | None) -> None:
        """The call's bill is recorded (``cost`` None: nothing billed, or billing failed)."""
        with self._lock:
            self._costs[id(call)] = cost

    def finished(self) -> tuple[list[Cost | None], int]:
        """The costs of the calls that have returned and are billed, and how many returned but are not billed yet."""
        costs: list[Cost | None] = []
        pending = 0
        with self._lock:
            for call in self._calls:
                if call.end_ns is None:
                    continue  # still running (a stream being read): not known yet
                if id(call) in self._costs:
                    costs.append(self._costs[id(call)])
                else:
                    pending += 1
        return costs, pending

    async def header_value(self, wait_seconds: float = BILL_WAIT_SECONDS) -> bytes | None:
        """The header for the calls that have returned, once billed (waiting up to ``wait_seconds``);
        None when no call of the request returned with a bill (none made, or none reached a model)."""
        deadline = time.monotonic() + wait_seconds
        costs, pending = self.finished()
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            costs, pending = self.finished()
        value = cost_header(costs, pending)
        return value.encode("ascii", errors="replace") if value else None


def cost_header(costs: list[Cost | None], pending: int = 0) -> str:
    """``X-Tokenmeter-Cost`` for these costs, e.g. ``0.000123 CNY, 0.002 CNY virtual, unpriced``; '' for none."""
    totals: dict[tuple[str, bool], Decimal] = {}
    unpriced = False
    for cost in costs:
        if cost is None:
            continue  # nothing billed: the call failed before the server answered
        if cost.amount is None or cost.currency is None:
            unpriced = True
            continue
        key = (cost.currency, cost.virtual)
        totals[key] = totals.get(key, Decimal(0)) + cost.amount
    parts = [_amount_text(amount) + f" {currency}" + (" virtual" if virtual else "")
             for (currency, virtual), amount in sorted(totals.items())]  # fmt: skip
    if unpriced:
        parts.append(_UNPRICED)
    if pending:
        parts.append(_PENDING)
    return ", ".join(parts)


def _amount_text(amount: Decimal) -> str:
    """Exact, never an exponent, no trailing zeros: 0.000123, 12, 0."""
    return format(amount.normalize(), "f") if amount else "0"


_costs: ContextVar[RequestCosts | None] = ContextVar("tokenmeter_request_costs", default=None)


@contextlib.contextmanager
def collecting_costs() -> Iterator[RequestCosts]:
    """Collect the costs of the calls started inside (one request)."""
    costs = RequestCosts()
    token = _costs.set(costs)
    try:
        yield costs
    finally:
        _costs.reset(token)


def track_cost(call: LLMCall) -> None:
    """Count a new ``call`` in the cost of the request being served, if it collects costs (and the call is no hop)."""
    costs = _costs.get()
    if costs is not None and not call.hop:
        call.request_costs = costs
        costs.started(call)


def request_cost_billed(call: LLMCall, cost: Cost | None) -> None:
    """The call's bill is known (on the background finisher): its request's header may now say what it cost."""
    if call.request_costs is not None:
        call.request_costs.billed(call, cost)
