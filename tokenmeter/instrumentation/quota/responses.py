"""The HTTP answer for a call a quota stopped: 429 with the message people read.

Used by the identity middleware when a request handler lets a
:class:`~tokenmeter.instrumentation.quota.errors.QuotaError` escape before its response started. The
body has the OpenAI error shape, so OpenAI clients (and Chatchat's ``/v1`` routes) show
the message: ``{"error": {"message", "type", "code", "budget", "resets_at"}}``;
``Retry-After`` says when the budget resets.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Final

from tokenmeter.instrumentation.quota.errors import QuotaDegraded, QuotaError, QuotaUnavailable

STATUS: Final = 429


def quota_error_code(error: QuotaError) -> str:
    if isinstance(error, QuotaUnavailable):
        return "quota_unavailable"
    if isinstance(error, QuotaDegraded):
        return "quota_degraded"
    return "quota_exceeded"


def quota_error_response(error: QuotaError, now: datetime | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of the 429 answer."""
    verdict = error.verdict
    code = quota_error_code(error)
    body = json.dumps({"error": {
        "message": str(error), "type": code, "code": code, "budget": verdict.budget,
        "resets_at": verdict.resets_at.isoformat() if verdict.resets_at else None,
    }}, ensure_ascii=False).encode()  # fmt: skip
    headers = [(b"content-type", b"application/json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if verdict.resets_at is not None:
        seconds = (verdict.resets_at - (now or datetime.now(UTC))).total_seconds()
        headers.append((b"retry-after", str(max(1, math.ceil(seconds))).encode()))
    return headers, body
