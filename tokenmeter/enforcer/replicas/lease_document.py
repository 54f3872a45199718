"""A lease node: where it lives and the JSON it holds, what each replica leased of one budget,
subject and period.

    <root>/leases/<period start>/<budget, subject hash>
        {"budget": ..., "subject": ..., "period_start": ...,
         "leases": {"<replica>": {"tokens": n, "cost": {"CNY": "1.5"}}}}

Plain functions over plain data; reading and writing the nodes is
:class:`~tokenmeter.enforcer.replicas.lease_nodes.LeaseNodes`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from tokenmeter.enforcer.decision import Usage


class LeaseKey(NamedTuple):
    budget: str
    subject: str
    period_start: datetime


def lease_path(root: str, key: LeaseKey) -> str:
    """One node per budget and subject under its period's node (a period's nodes go together when it is old)."""
    digest = hashlib.sha256(f"{key.budget}\0{key.subject}".encode()).hexdigest()[:32]
    return f"{root}/leases/{int(key.period_start.timestamp())}/{digest}"


def decode_document(data: bytes | None) -> dict[str, Any]:
    """The document a node holds (an empty one for an empty node or JSON that is no object); ValueError when the
    node holds no JSON at all."""
    document = json.loads(data or b"{}")
    return document if isinstance(document, dict) else {}


def encode_document(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def usage_json(usage: Usage) -> dict[str, Any]:
    return {"tokens": usage.tokens, "cost": {currency: str(amount) for currency, amount in usage.cost.items()}}


def usage_of(entry: Mapping[str, Any]) -> Usage:
    cost = {str(currency): Decimal(str(amount)) for currency, amount in dict(entry.get("cost") or {}).items()}
    return Usage(int(entry.get("tokens") or 0), cost)


def larger(first: Usage, second: Usage) -> Usage:
    """The larger of each amount."""
    costs = dict(first.cost)
    for currency, amount in second.cost.items():
        costs[currency] = max(costs.get(currency, Decimal(0)), amount)
    return Usage(max(first.tokens, second.tokens), costs)


def lease_in(leases: Mapping[str, Any], replica: str) -> Usage:
    """What ``replica`` holds in a document's leases (nothing when its entry is missing or no lease)."""
    entry = leases.get(replica)
    return usage_of(entry) if isinstance(entry, dict) else Usage()


def held_by_others(document: Mapping[str, Any], replica: str, counts: Callable[[str], bool]) -> Usage:
    """What the replicas other than ``replica`` hold in ``document``, of those whose leases still ``counts``."""
    total = Usage()
    for other, entry in dict(document.get("leases") or {}).items():
        if other != replica and counts(other) and isinstance(entry, dict):
            total = total.plus(usage_of(entry))
    return total


def forget_settled(leases: dict[str, Any], replica: str, counts: Callable[[str], bool]) -> None:
    """Remove the leases of the other replicas that no longer count (departed, and settled since)."""
    for other in [r for r in leases if r != replica and not counts(r)]:
        del leases[other]
