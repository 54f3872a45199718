"""What an app sees when a quota stops a call: typed errors with messages for people.

- :class:`QuotaExceeded` (``deny``): the call was not made. The message says which
  budget, how much was used of how much, and when it resets, in Chinese and English.
- :class:`QuotaDegraded` (``degrade``): the call was not made; integrations answer from
  retrieval only (Chatchat: the knowledge-base hits, without a model's answer).
- :class:`QuotaUnavailable` (a :class:`QuotaExceeded`): the enforcer could not be asked
  and ``TOKENMETER_FAIL_MODE=closed``.

``str(error)`` is the Chinese message, then the English one; ``error.message("en")`` and
``error.message("zh")`` give one language. Every field of the decision is an attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Final, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenmeter.errors import TokenmeterError
from tokenmeter.quota_wire import DecisionDocument

Language = Literal["zh", "en"]

_SCOPE_ZH: Final = {"organisation": "组织", "department": "部门", "user": "用户", "app": "应用"}
_PERIOD_ZH: Final = {"day": "每日", "week": "每周", "month": "每月", "year": "每年"}
_PERIOD_EN: Final = {"day": "per day", "week": "per week", "month": "per month", "year": "per year"}


_DOCUMENT_FIELDS: Final = frozenset(DecisionDocument.model_fields)


@dataclass(frozen=True)
class QuotaVerdict:
    """The enforcer's answer for one call, as the app received it."""

    action: str  # allow | warn | downgrade | degrade | deny | unavailable
    requested_model: str
    effective_model: str
    budget: str | None = None
    scope: str | None = None
    subject: str | None = None
    period: str | None = None
    used_tokens: int = 0
    limit_tokens: int | None = None
    used_cost: str | None = None
    limit_cost: str | None = None
    currency: str | None = None
    ratio: float = 0.0
    threshold: float | None = None  # on warn: the warning threshold crossed
    resets_at: datetime | None = None
    timezone: str | None = None
    reason: str = ""
    reservation_id: str | None = None
    fail_open: bool = False  # the enforcer did not answer; the call went ahead
    lease_id: str | None = None  # decided in the app from a lease (instrumentation/quota/leases.py)
    experiment: str | None = None  # the policy's experiment the call is in (docs/experiments.md)
    experiment_arm: str | None = None  # control | candidate; in the candidate arm effective_model is the candidate
    # The policy's routing rule that chose effective_model, and its tier (docs/routing.md); None: not routed.
    route_rule: str | None = None
    route_tier: str | None = None

    @classmethod
    def from_document(cls, document: DecisionDocument, fallback_model: str) -> QuotaVerdict:
        """The enforcer's answer as a verdict: every field the two share by name, ``action`` from ``decision``,
        and the asked-about model where the answer leaves a model out."""
        shared = {field.name: getattr(document, field.name) for field in fields(cls) if field.name in _DOCUMENT_FIELDS}
        shared["requested_model"] = document.requested_model or fallback_model
        shared["effective_model"] = document.effective_model or fallback_model
        return cls(action=document.decision, **shared)

    def usage_text(self, language: Language) -> str:
        """'1,000 / 1,000 tokens' or '812.5 / 800 CNY' (the limit that applies)."""
        if self.limit_cost is not None and self.used_cost is not None and self.currency:
            return f"{self.used_cost} / {self.limit_cost} {self.currency}"
        if self.limit_tokens is not None:
            return f"{self.used_tokens:,} / {self.limit_tokens:,} tokens"
        return "?"

    def resets_text(self) -> str:
        if self.resets_at is None:
            return "?"
        moment = self.resets_at
        try:
            if self.timezone:
                moment = moment.astimezone(ZoneInfo(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            pass
        zone = f" ({self.timezone})" if self.timezone else ""
        return moment.strftime("%Y-%m-%d %H:%M") + zone


def budget_description(verdict: QuotaVerdict, language: Language) -> str:
    """'预算“b”（用户 alice，每日）' / "budget 'b' (user alice, per day)": whose budget a message is about."""
    if language == "zh":
        scope = _SCOPE_ZH.get(verdict.scope or "", verdict.scope or "")
        who = f"{scope} {verdict.subject}" if verdict.subject else scope
        return f"预算“{verdict.budget}”（{who}，{_PERIOD_ZH.get(verdict.period or '', verdict.period or '')}）"
    who = f"{verdict.scope} {verdict.subject}" if verdict.subject else "the organisation"
    return f"budget '{verdict.budget}' ({who}, {_PERIOD_EN.get(verdict.period or '', verdict.period or '')})"


def top_up_link(verdict: QuotaVerdict) -> str | None:
    """Where the person asks for more (``TOKENMETER_TOPUP_URL`` with the budget filled in), or None."""
    from tokenmeter.settings import get_settings  # read when a call is refused, not at import

    template = get_settings().topup_url
    if not template or verdict.budget is None:
        return None
    for name in ("budget", "scope", "subject"):
        template = template.replace("{" + name + "}", quote(getattr(verdict, name) or "", safe=""))
    return template


def top_up_text(verdict: QuotaVerdict, language: Language) -> str:
    """The sentence a refusal ends with when a top-up can be asked for ('' when no link is set)."""
    link = top_up_link(verdict)
    if link is None:
        return ""
    return f"如需追加额度，请在此申请：{link}" if language == "zh" else f" To ask for a top-up: {link}"


class QuotaError(TokenmeterError):
    """A quota decision that stops the call; ``verdict`` has the details."""

    def __init__(self, verdict: QuotaVerdict) -> None:
        self.verdict = verdict
        super().__init__(f"{self.message('zh')}\n{self.message('en')}")

    @property
    def budget(self) -> str | None:
        return self.verdict.budget

    @property
    def resets_at(self) -> datetime | None:
        return self.verdict.resets_at

    def message(self, language: Language = "en") -> str:
        raise NotImplementedError

    def _who(self, language: Language) -> str:
        return budget_description(self.verdict, language)


class QuotaExceeded(QuotaError):  # noqa: N818 - the name the issue and docs use
    """``deny``: the budget is used up; the call was not made."""

    def message(self, language: Language = "en") -> str:
        verdict = self.verdict
        if language == "zh":
            return (
                f"额度已用尽：{self._who('zh')}已使用 {verdict.usage_text('zh')}，将于 {verdict.resets_text()} 重置。"
                + top_up_text(verdict, "zh")
            )
        return (
            f"Quota exceeded: {self._who('en')} has used {verdict.usage_text('en')}; "
            f"it resets at {verdict.resets_text()}." + top_up_text(verdict, "en")
        )


class QuotaDegraded(QuotaError):  # noqa: N818
    """``degrade``: past the budget the answer comes from retrieval only; the call was not made."""

    def message(self, language: Language = "en") -> str:
        verdict = self.verdict
        if language == "zh":
            return (
                f"已达额度上限：{self._who('zh')}已使用 {verdict.usage_text('zh')}，"
                f"在 {verdict.resets_text()} 重置前仅提供知识库检索结果，不调用模型。" + top_up_text(verdict, "zh")
            )
        return (
            f"Quota reached: {self._who('en')} has used {verdict.usage_text('en')}; until it resets at "
            f"{verdict.resets_text()} answers come from retrieval only, without a model." + top_up_text(verdict, "en")
        )


class QuotaUnavailable(QuotaExceeded):
    """The enforcer could not be asked and the deployment refuses unchecked calls (fail mode closed)."""

    def message(self, language: Language = "en") -> str:
        if language == "zh":
            return "暂时无法校验调用额度（额度服务不可用），按本系统配置拒绝调用。请稍后重试。"
        return (
            "The quota service cannot be reached and this deployment refuses calls it cannot check "
            "(TOKENMETER_FAIL_MODE=closed). Please try again shortly."
        )
