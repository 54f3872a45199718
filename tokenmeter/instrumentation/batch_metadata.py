"""Who submitted a batch, kept in the batch's own ``metadata`` so any process that reads its results knows.

At ``batches.create`` the submitter's attribution (user, department, app, conversation) is added to the batch's
``metadata`` under ``tokenmeter.*`` keys, where the app's own metadata leaves room: OpenAI allows 16 keys of at
most 64 characters with values of at most 512 (an attribution value has at most 256). Fields are added in that
order of importance while keys are free; the app's own keys are never changed or dropped. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tokenmeter.instrumentation.attribution import Attribution

# Attribution field -> metadata key. Not telemetry names (they travel in the batch, not in spans).
METADATA_KEYS: Final = (
    ("user", "tokenmeter.user"),
    ("department", "tokenmeter.department"),
    ("app", "tokenmeter.app"),
    ("session", "tokenmeter.conversation"),
)
MAX_METADATA_KEYS: Final = 16  # OpenAI's limits on a batch's metadata
MAX_VALUE_CHARS: Final = 512


def with_attribution(metadata: Any, who: Attribution) -> dict[str, str] | None:
    """``metadata`` with the submitter's fields added where there is room; None when nothing is added (no
    field set, no room, or metadata that is not a mapping of strings: the app's request then goes as it was).
    Anything but a mapping (None, the SDK's "not given" marker) is no metadata."""
    given = dict(metadata) if isinstance(metadata, Mapping) else {}
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in given.items()):
        return None
    added = dict(given)
    for field, key in METADATA_KEYS:
        value = getattr(who, field)
        if value is None or key in added or len(added) >= MAX_METADATA_KEYS:
            continue
        added[key] = value[:MAX_VALUE_CHARS]
    return added if len(added) > len(given) else None


def attribution_of(metadata: Any) -> Attribution | None:
    """The submitter recorded in a batch's metadata; None when it holds none of tokenmeter's keys."""
    if not isinstance(metadata, Mapping):
        return None
    fields = {field: metadata.get(key) for field, key in METADATA_KEYS}
    values = {field: value for field, value in fields.items() if isinstance(value, str) and value}
    return Attribution(**values) if values else None
