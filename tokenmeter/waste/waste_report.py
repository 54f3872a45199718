"""The waste report: its findings ranked and cut to the top rows, with totals, and its JSON document (what
`tokenmeter report --waste --format json` prints and ``GET /v1/waste`` answers; amounts as decimal strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from tokenmeter.waste.findings import (
    CacheHits,
    CacheReplay,
    ContextShare,
    HeavyUser,
    IncompleteStreams,
    RepeatedPrompt,
    Retries,
    from_document,
    to_document,
)
from tokenmeter.waste.routing_replay import RoutingReplay, RuleReplay
from tokenmeter.waste.spend import Spend, added
from tokenmeter.waste.waste_query import WasteQuery

INTENT_NOTE: Final = ("stored calls carry an intent only when the app classified the question (the policy's "
                      "intents or classifier); a rule on intent does not hold for the others")  # fmt: skip
BUDGET_NOTE: Final = "budget_left is unknown for stored calls: a rule on budget_left never holds in the replay"


def total(spends: Iterable[Spend]) -> Spend:
    found = list(spends)
    return Spend(sum(s.calls for s in found), sum(s.input_tokens for s in found), sum(s.output_tokens for s in found),
                 added(*(s.costs for s in found)), sum(s.unpriced_calls for s in found))  # fmt: skip


@dataclass(frozen=True)
class WasteFindings:
    """What the store answered, before ranking (the rows of each finding)."""

    repeated_prompts: Sequence[RepeatedPrompt] = ()
    heavy_users: Sequence[HeavyUser] = ()
    context: Sequence[ContextShare] = ()
    incomplete_streams: Sequence[IncompleteStreams] = ()
    retries: Sequence[Retries] = ()
    cache: Sequence[CacheReplay] = ()
    cache_hits: CacheHits = field(default_factory=CacheHits)


@dataclass(frozen=True)
class WasteReport:
    query: WasteQuery
    repeated_prompts: tuple[RepeatedPrompt, ...]
    heavy_users: tuple[HeavyUser, ...]
    context: tuple[ContextShare, ...]
    incomplete_streams: tuple[IncompleteStreams, ...]
    incomplete_total: Spend  # of all the period's incomplete streams, also those past the top rows
    retries: tuple[Retries, ...]
    retries_total: Spend
    cache: tuple[CacheReplay, ...]
    cache_hits: CacheHits
    routing: RoutingReplay | None
    routing_note: str = ""  # why there is no routing replay

    @property
    def cache_total(self) -> CacheReplay:
        rows = self.cache
        return CacheReplay("", sum(r.calls for r in rows), sum(r.calls_without_hash for r in rows),
                           total(r.hits for r in rows))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return waste_document(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> WasteReport:
        return read_waste_document(document)


def build_waste_report(query: WasteQuery, findings: WasteFindings, routing: RoutingReplay | None,
                       routing_note: str = "") -> WasteReport:  # fmt: skip
    """Each finding ranked (docs/waste.md), cut to ``query.top`` rows; totals over all rows."""
    top = query.top
    repeated = sorted(findings.repeated_prompts, key=lambda r: (-r.rank, -r.spend.calls, r.prompt_hash, r.app, r.model))
    heavy = sorted(findings.heavy_users, key=lambda h: (-h.ratio, -h.calls, h.department, h.user))
    context = sorted(findings.context, key=lambda c: (-c.input_tokens * c.context_share, c.app, c.app_route))
    streams = sorted(findings.incomplete_streams, key=lambda s: (-s.incomplete.calls, s.app, s.user))
    retries = sorted(findings.retries, key=lambda r: (-r.repeats.calls, r.app, r.user))
    cache = sorted(findings.cache, key=lambda c: (-c.hits.calls, c.model))
    return WasteReport(query, tuple(repeated[:top]), tuple(heavy[:top]), tuple(context[:top]), tuple(streams[:top]),
                       total(s.incomplete for s in streams), tuple(retries[:top]), total(r.repeats for r in retries),
                       tuple(cache), findings.cache_hits, routing, routing_note)  # fmt: skip


_LISTS: Final = (("repeated_prompts", RepeatedPrompt), ("heavy_users", HeavyUser), ("context", ContextShare),
                 ("incomplete_streams", IncompleteStreams), ("retries", Retries), ("cache", CacheReplay))  # fmt: skip


def waste_document(report: WasteReport) -> dict[str, Any]:
    query, period = report.query, report.query.period
    document: dict[str, Any] = {
        "period": {"label": period.label, "kind": period.kind, "start": period.start.isoformat(),
                   "end": period.end.isoformat(), "timezone": period.timezone},
        "settings": {name: value for name, value in query.parameters().items() if name not in ("period", "timezone")},
    }  # fmt: skip
    document |= {name: [to_document(row) for row in getattr(report, name)] for name, _ in _LISTS}
    document |= {"incomplete_total": report.incomplete_total.to_dict(), "retries_total": report.retries_total.to_dict(),
                 "cache_total": to_document(report.cache_total), "cache_hits": to_document(report.cache_hits),
                 "routing": _routing_document(report.routing), "routing_note": report.routing_note}  # fmt: skip
    return document


def _routing_document(replay: RoutingReplay | None) -> dict[str, Any] | None:
    if replay is None:
        return None
    document = {name: getattr(replay, name) for name in ("policy", "calls", "calls_with_intent",
                                                         "calls_without_features", "calls_in_experiments")}  # fmt: skip
    return document | {
        "rules": [to_document(rule) for rule in replay.rules],
        "saved": [money.to_dict() for money in replay.saved],
        "notes": [INTENT_NOTE, BUDGET_NOTE],
    }


def read_waste_document(document: Mapping[str, Any]) -> WasteReport:
    """The report a document describes (the command line reads serve's answer so); ValueError if it is not one."""
    try:
        settings = dict(document["settings"])
        period = document["period"]
        query = WasteQuery.parse(period=period["label"], timezone=period["timezone"], **settings)
        lists = {name: tuple(from_document(kind, row) for row in document[name]) for name, kind in _LISTS}
        routing = _read_routing(document["routing"])
        return WasteReport(query, lists["repeated_prompts"], lists["heavy_users"], lists["context"],
                           lists["incomplete_streams"], Spend.from_dict(document["incomplete_total"]), lists["retries"],
                           Spend.from_dict(document["retries_total"]), lists["cache"],
                           from_document(CacheHits, document["cache_hits"]), routing,
                           str(document.get("routing_note") or ""))  # fmt: skip
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a waste report: {exc!r}") from None


def _read_routing(document: Mapping[str, Any] | None) -> RoutingReplay | None:
    if document is None:
        return None
    rules = tuple(from_document(RuleReplay, rule) for rule in document["rules"])
    replay = RoutingReplay(str(document["policy"]), 0, 0, 0, 0, rules)
    counts = {name: int(document[name]) for name in ("calls", "calls_with_intent", "calls_without_features",
                                                     "calls_in_experiments")}  # fmt: skip
    return replace(replay, **counts)
