"""Attribute maps of a metered call, shared by its span and its metric points.

The value type OTel attributes take, how optional values enter a map (absent, never
empty), and the attributes that say who made the call.
"""

from __future__ import annotations

from typing import Any

from tokenmeter import semconv
from tokenmeter.instrumentation.attribution import Attribution

AttributeMap = dict[str, str | bool | int | float | list[str]]


def put(attributes: AttributeMap, key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is None or empty: absent beats empty in queries."""
    if value is not None and value != "":
        attributes[key] = value


def attribution_attributes(who: Attribution, include_session: bool = True) -> AttributeMap:
    """User, department and app; the session too, except on metrics (one series per session is too many)."""
    attributes: AttributeMap = {}
    put(attributes, semconv.ENDUSER_ID, who.user)
    put(attributes, semconv.TM_DEPARTMENT, who.department)
    put(attributes, semconv.TM_APP, who.app)
    if include_session:
        put(attributes, semconv.GEN_AI_CONVERSATION_ID, who.session)
    return attributes
