"""The routing document the enforcer serves at ``GET /v1/routing``: what an app needs to classify questions.

Apps classify their own questions (the text never leaves them) with the policy's intents and trained
classifier; the enforcer evaluates the rules. The document's ``version`` is a digest of its content,
and every check's answer names it (``routing_version``), so an app learns of a new policy on its next
check and fetches the document again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tokenmeter.routing.routing_policy import Routing


def routing_document(routing: Routing | None, classifier: dict[str, Any] | None) -> dict[str, Any]:
    """``{"version", "intents", "classifier"}``; version None when the policy has no routing section."""
    if routing is None:
        return {"version": None, "intents": [], "classifier": None}
    content = {
        "intents": [intent.model_dump(mode="json") for intent in routing.intents],
        "classifier": classifier,
    }
    return {"version": document_version(content), **content}


def document_version(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
