"""What the answer cache keeps per question: the answer and what the call that produced it cost."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


@dataclass(frozen=True)
class CachedAnswer:
    """One stored answer: its text, who answered and why it stopped, and the original call's usage and cost.

    The usage and cost are what a later hit saves (``tokenmeter.cache.saved.*``). ``cost`` is an exact
    decimal string in ``currency``; both None when the original call was unpriced.
    """

    text: str
    model: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost: str | None
    currency: str | None
    virtual: bool
    stored_at: float  # seconds since the epoch, on the cache's clock

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedAnswer | None:
        """The entry, or None when the bytes are not one (a newer or older format is a miss, not an error)."""
        try:
            fields = json.loads(data.decode("utf-8"))
            answer = cls(**fields) if isinstance(fields, dict) else None
        except (ValueError, TypeError):
            return None
        return answer if answer is not None and answer.well_formed() else None

    def well_formed(self) -> bool:
        texts_ok = all(isinstance(v, str) for v in (self.text, self.model, self.finish_reason))
        counts_ok = all(_count(v) for v in (self.input_tokens, self.output_tokens))
        cost_ok = (self.cost is None and self.currency is None) or (
            isinstance(self.currency, str) and _decimal(self.cost) is not None
        )
        return texts_ok and counts_ok and cost_ok and isinstance(self.virtual, bool) and _number(self.stored_at)

    def saved_cost(self) -> Decimal | None:
        return _decimal(self.cost)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _decimal(value: Any) -> Decimal | None:
    if not isinstance(value, str):
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None
