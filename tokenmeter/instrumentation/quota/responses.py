"""What people read about quotas in an HTTP answer.

- The answer for a call a quota stopped: 429 with the message. Used by the identity
  middleware when a request handler lets a
  :class:`~tokenmeter.instrumentation.quota.errors.QuotaError` escape before its response
  started. The body has the OpenAI error shape, so OpenAI clients (and Chatchat's ``/v1``
  routes) show the message: ``{"error": {"message", "type", "code", "budget", "resets_at"}}``;
  ``Retry-After`` says when the budget resets.
- Notices for answers that went ahead (``warn``, ``downgrade``), for integrations that put
  them where the person reads (Chatchat: after the answer), in ``TOKENMETER_QUOTA_NOTICE``'s
  languages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from tokenmeter.instrumentation.quota.errors import (
    Language,
    QuotaDegraded,
    QuotaError,
    QuotaUnavailable,
    QuotaVerdict,
    budget_description,
)

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


def in_languages(languages: str, text: Callable[[Language], str]) -> str:
    """``text`` in TOKENMETER_QUOTA_NOTICE's languages: ``zh``, ``en``, else Chinese then English."""
    chosen: tuple[Language, ...] = ("zh",) if languages == "zh" else ("en",) if languages == "en" else ("zh", "en")
    return "\n\n".join(text(language) for language in chosen)


def warning_notice(verdict: QuotaVerdict, language: Language) -> str:
    """A ``warn`` decision, told once: how much of which budget is used, and when it resets."""
    if language == "zh":
        used = f"{verdict.usage_text('zh')}（{verdict.ratio:.0%}）"
        return f"⚠️ 额度提醒：{budget_description(verdict, 'zh')}已使用 {used}，将于 {verdict.resets_text()} 重置。"
    used = f"{verdict.ratio:.0%} ({verdict.usage_text('en')})"
    return f"⚠️ Quota notice: {budget_description(verdict, 'en')} has used {used}; it resets at {verdict.resets_text()}."


def downgrade_notice(verdict: QuotaVerdict, language: Language) -> str:
    """A ``downgrade`` decision: which model answered instead of the one asked for, and why."""
    asked, answered = verdict.requested_model, verdict.effective_model
    if language == "zh":
        return (
            f"本回答由 {answered} 生成：{budget_description(verdict, 'zh')}已使用 {verdict.usage_text('zh')}，"
            f"在 {verdict.resets_text()} 重置前，{asked} 的请求改由 {answered} 回答。"
        )
    return (
        f"This answer is from {answered}: {budget_description(verdict, 'en')} has used {verdict.usage_text('en')}; "
        f"until it resets at {verdict.resets_text()}, requests for {asked} are answered by {answered}."
    )
