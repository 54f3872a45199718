"""Add trace context and attribution baggage to outgoing LLM requests.

Chatchat calls its own OpenAI-compatible `/v1` routes over loopback (a hop); the
`traceparent` and `baggage` headers let the receiving side know who the call is
for. The baggage carries the user id and department, so by default it goes only to
hops (``TOKENMETER_HOP_SERVERS`` and what integrations register): a model server on
loopback is no safer a recipient than a remote one, since a local proxy such as
one-api may forward the headers to a third-party API.

Policies, each sending to a superset of the one before: ``never``; ``hops``
(default); ``loopback`` (hops and every loopback server); ``always``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def should_propagate(policy: str, host: str | None, *, hop: bool) -> bool:
    """Whether a request to ``host`` (a hop server or not) gets the context headers under ``policy``."""
    if policy == "always":
        return True
    if policy == "loopback":
        return hop or is_loopback_host(host)
    if policy == "hops":
        return hop
    return False


def with_context_headers(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kwargs with `extra_headers` extended by the current context's propagation headers.

    Headers the caller set itself are left as they are.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return dict(kwargs)
    existing = dict(kwargs.get("extra_headers") or {})
    present = {name.lower() for name in existing}
    for name, value in carrier.items():
        if name.lower() not in present:
            existing[name] = value
    return {**kwargs, "extra_headers": existing}
