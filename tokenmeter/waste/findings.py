"""The waste report's findings, one dataclass each (docs/waste.md says how each is computed and read).

Each keeps the sums it was made from; the derived figures (a ratio, a share, a rank) are properties, written
into the JSON for its readers and recomputed when a document is read back.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from tokenmeter.waste.spend import Money, Spend, decimal_text, rank_amount

T = TypeVar("T")


@dataclass(frozen=True)
class RepeatedPrompt:
    """Calls of one prompt hash (the same messages) to one requested model from one app."""

    prompt_hash: str
    app: str
    model: str
    users: int
    spend: Spend

    @property
    def rank(self) -> Decimal:
        """calls x cost (cost: the amounts of its prices added; no price: 0, ranked by calls after)."""
        return self.spend.calls * rank_amount(self.spend.costs)


@dataclass(frozen=True)
class HeavyUser:
    """A user whose input tokens per call are far above their department's (all its users' calls)."""

    user: str
    department: str
    calls: int
    input_tokens: int
    department_calls: int
    department_input_tokens: int

    @property
    def input_tokens_per_call(self) -> float:
        return self.input_tokens / self.calls

    @property
    def department_input_tokens_per_call(self) -> float:
        return self.department_input_tokens / self.department_calls

    @property
    def ratio(self) -> float:
        return self.input_tokens_per_call / (self.department_input_tokens_per_call or 1.0)


@dataclass(frozen=True)
class ContextShare:
    """Per app and app route: how much of the prompt is not the question (retrieved context, history, system)."""

    app: str
    app_route: str
    calls: int
    prompt_chars: int
    question_chars: int
    input_tokens: int

    @property
    def context_share(self) -> float:
        return max(0.0, 1.0 - self.question_chars / self.prompt_chars) if self.prompt_chars else 0.0


@dataclass(frozen=True)
class IncompleteStreams:
    """An app's and user's streamed calls, and those whose stream was not read to the end (their spend)."""

    app: str
    user: str
    streams: int
    incomplete: Spend


@dataclass(frozen=True)
class Retries:
    """A user's calls of one app that repeated their own prompt hash within the retry window (the repeats)."""

    app: str
    user: str
    repeats: Spend


@dataclass(frozen=True)
class CacheReplay:
    """Per requested model: what a cache by prompt hash and model with the TTL would have answered."""

    model: str
    calls: int  # calls with a prompt hash (not served by the cache already)
    calls_without_hash: int
    hits: Spend  # the calls that would have been hits: their tokens and cost saved

    @property
    def hit_rate(self) -> float:
        return self.hits.calls / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class CacheHits:
    """What the repeat-answer cache really answered in the period and saved."""

    calls: int = 0
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    saved_costs: tuple[Money, ...] = ()


def to_document(finding: Any) -> dict[str, Any]:
    """Its fields, then its derived figures (properties), as JSON values (amounts as decimal strings)."""
    document = {field.name: _encode(getattr(finding, field.name)) for field in dataclasses.fields(finding)}
    for name, member in vars(type(finding)).items():
        if isinstance(member, property):
            document[name] = _encode(getattr(finding, name))
    return document


def from_document(kind: type[T], document: Mapping[str, Any]) -> T:
    """``kind`` from :func:`to_document`'s output (derived figures ignored); ValueError when it does not fit."""
    hints = get_type_hints(kind)
    try:
        values = {field.name: _decode(hints[field.name], document[field.name]) for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"not a {kind.__name__}: {exc!r}") from None
    return kind(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, Spend | Money):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_encode(one) for one in value]
    if isinstance(value, Decimal):
        return decimal_text(value)
    return value


def _decode(hint: Any, value: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):  # X | None
        inner = next(arg for arg in get_args(hint) if arg is not type(None))
        return None if value is None else _decode(inner, value)
    if get_origin(hint) is tuple:
        return tuple(_decode(get_args(hint)[0], one) for one in value)
    if hint in (Spend, Money):
        return hint.from_dict(value)
    if hint is Decimal:
        return Decimal(str(value))
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) and not (hint is float and isinstance(value, int)):
            raise TypeError(f"{value!r} is not a {hint.__name__}")
        return hint(value)
    raise TypeError(f"no decoding for {hint!r}")
