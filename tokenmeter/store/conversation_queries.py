# ruff: noqa: S608 - the SQL is this module's own constants; values are bound parameters
"""Cost per conversation (`tokenmeter report --by conversation`), from the per-call rows of llm_usage.

The usage counters, which the other report dimensions read, carry no conversation id (one series per
conversation would be unbounded), so this report reads the spans' rows: ``llm_usage FINAL`` (a re-sent span
counts once), calls that were billed (answer-cache hits too, at 0) in ``[start, end)`` and carried a conversation id
(``gen_ai.conversation.id``). Calls in sampled-out traces are not there: with trace sampling on, these
numbers are the sampled calls only, unlike the counters'.

Costs in different currencies are never added up, so conversations are ranked by cost within each currency
(a virtual price apart): one section per (currency, virtual), its ``limit`` costliest conversations; a
conversation with calls in two currencies appears in both, with the calls of each. Calls without a price
form their own section, ranked by tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from tokenmeter.store.usage_queries import CALL_RAN

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

DEFAULT_LIMIT: Final = 20

_CALLS: Final = (
    """
    SELECT conversation, user, app, time, input_tokens, output_tokens,
           unpriced OR cost IS NULL AS no_price,
           if(no_price, '', currency) AS price_currency,
           virtual AND NOT no_price AS price_virtual,
           ifNull(cost, toDecimal128(0, 12)) AS call_cost
    FROM llm_usage FINAL
    WHERE time >= {start:DateTime64(9, 'UTC')} AND time < {end:DateTime64(9, 'UTC')}
      AND usage_source != '' AND """
    + CALL_RAN
)

_ROWS_SQL: Final = f"""
SELECT conversation, price_currency, price_virtual, no_price,
       uniqExact(user) AS users, any(user), uniqExact(app) AS apps, any(app), count() AS calls,
       sum(input_tokens) AS input, sum(output_tokens) AS output, sum(call_cost) AS total,
       min(time), max(time)
FROM ({_CALLS})
WHERE conversation != '' AND ({{conversation:String}} = '' OR conversation = {{conversation:String}})
GROUP BY conversation, price_currency, price_virtual, no_price
ORDER BY no_price, price_currency, price_virtual, total DESC, input + output DESC, conversation
LIMIT {{limit:UInt32}} BY no_price, price_currency, price_virtual
"""

_SECTIONS_SQL: Final = f"""
SELECT conversation != '' AS named, price_currency, price_virtual, no_price,
       uniqExact(conversation) AS conversations, count() AS calls, sum(input_tokens), sum(output_tokens),
       sum(call_cost)
FROM ({_CALLS})
WHERE {{conversation:String}} = '' OR conversation = {{conversation:String}}
GROUP BY named, price_currency, price_virtual, no_price
ORDER BY named, no_price, price_currency, price_virtual
"""


@dataclass(frozen=True)
class ConversationRow:
    """One conversation's calls priced in one currency (or without a price)."""

    conversation: str
    users: int  # distinct users; ``user`` is one of them
    user: str
    apps: int
    app: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None  # None in the section without a price
    first: datetime
    last: datetime


@dataclass(frozen=True)
class CostSection:
    """The calls priced in one currency (``currency`` None: without a price), and its costliest conversations."""

    currency: str | None
    virtual: bool
    conversations: int  # in the period, not only those in ``rows``
    calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None
    rows: tuple[ConversationRow, ...] = ()


@dataclass(frozen=True)
class ConversationCosts:
    """The report: sections per price, and the calls that carried no conversation id (per price too)."""

    period: str
    start: datetime
    end: datetime
    limit: int
    conversation: str | None = None
    sections: tuple[CostSection, ...] = ()
    without_conversation: tuple[CostSection, ...] = field(default=())
    by: str = "conversation"

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``--format json``, ``GET /v1/report?by=conversation``); amounts are decimal strings."""
        return {
            "by": self.by,
            "period": self.period,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "limit": self.limit,
            "subject": self.conversation,
            "source": "llm_usage",
            "sections": [_section_dict(section) for section in self.sections],
            "without_conversation": [_section_dict(section) for section in self.without_conversation],
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ConversationCosts:
        """The inverse of ``to_dict``; ValueError when ``document`` is not this report."""
        try:
            if document["by"] != "conversation":
                raise ValueError(f"by is {document['by']!r}")
            return cls(str(document["period"]), datetime.fromisoformat(document["start"]),
                       datetime.fromisoformat(document["end"]), int(document["limit"]), document.get("subject"),
                       tuple(_section(item) for item in document["sections"]),
                       tuple(_section(item) for item in document["without_conversation"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"not a conversation cost report ({type(exc).__name__}: {exc})") from None


def conversation_costs(
    client: Client, period: str, start: datetime, end: datetime, *, conversation: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> ConversationCosts:  # fmt: skip
    """The report for ``[start, end)`` (a ``period`` of the calendar), optionally for one conversation id."""
    if limit < 1:
        raise ValueError(f"limit must be a positive number of conversations, got {limit}")
    parameters = {"start": start, "end": end, "conversation": conversation or "", "limit": limit}
    rows = client.query(_ROWS_SQL, parameters=parameters).result_rows
    by_price: dict[tuple[str, bool, bool], list[ConversationRow]] = {}
    for conversation_id, currency, virtual, no_price, *values in rows:
        by_price.setdefault((str(currency), bool(virtual), bool(no_price)), []).append(
            _row(str(conversation_id), bool(no_price), values)
        )
    sections, unnamed = [], []
    for named, currency, virtual, no_price, count, calls, input_tokens, output_tokens, cost in client.query(
        _SECTIONS_SQL, parameters=parameters
    ).result_rows:
        section = CostSection(
            None if no_price else str(currency),
            bool(virtual),
            int(count) if named else 0,
            int(calls),
            int(input_tokens),
            int(output_tokens),
            None if no_price else Decimal(cost),
            tuple(by_price.get((str(currency), bool(virtual), bool(no_price)), ())) if named else (),
        )
        (sections if named else unnamed).append(section)
    return ConversationCosts(period, start, end, limit, conversation, tuple(sections), tuple(unnamed))  # fmt: skip


def _row(conversation: str, no_price: bool, values: list[Any]) -> ConversationRow:
    users, user, apps, app, calls, input_tokens, output_tokens, cost, first, last = values
    amount = None if no_price else Decimal(cost)
    return ConversationRow(conversation, int(users), str(user), int(apps), str(app), int(calls), int(input_tokens),
                           int(output_tokens), amount, _utc(first), _utc(last))  # fmt: skip


def _utc(moment: datetime) -> datetime:
    """The driver's naive UTC datetimes as aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount.normalize(), "f") if amount else "0"


def _section_dict(section: CostSection) -> dict[str, Any]:
    return {
        "currency": section.currency, "virtual": section.virtual, "conversations": section.conversations,
        "calls": section.calls, "input_tokens": section.input_tokens, "output_tokens": section.output_tokens,
        "cost": _text(section.cost),
        "rows": [{"conversation": row.conversation, "users": row.users, "user": row.user, "apps": row.apps,
                  "app": row.app, "calls": row.calls, "input_tokens": row.input_tokens,
                  "output_tokens": row.output_tokens, "cost": _text(row.cost), "first": row.first.isoformat(),
                  "last": row.last.isoformat()} for row in section.rows],
    }  # fmt: skip


def _amount(text: object) -> Decimal | None:
    if text is None:
        return None
    if not isinstance(text, str):  # a JSON number would have passed through float
        raise TypeError(f"amount must be a decimal string, got {text!r}")
    return Decimal(text)


def _section(item: dict[str, Any]) -> CostSection:
    rows = tuple(
        ConversationRow(str(row["conversation"]), int(row["users"]), str(row["user"]), int(row["apps"]),
                        str(row["app"]), int(row["calls"]), int(row["input_tokens"]), int(row["output_tokens"]),
                        _amount(row["cost"]), datetime.fromisoformat(row["first"]), datetime.fromisoformat(row["last"]))
        for row in item["rows"]
    )  # fmt: skip
    return CostSection(item["currency"], bool(item["virtual"]), int(item["conversations"]), int(item["calls"]),
                       int(item["input_tokens"]), int(item["output_tokens"]), _amount(item["cost"]), rows)  # fmt: skip
