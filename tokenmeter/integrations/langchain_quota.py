"""The quota check of a LangChain run metered by the callback handler, made before its model is called.

LangChain raises an error of a handler whose ``raise_error`` is true out of the run, and a run's start event
comes before its model is called: a :class:`~tokenmeter.instrumentation.quota.errors.QuotaError` raised there
stops the run, with the openai path's errors (``deny``: ``QuotaExceeded``, ``degrade``: ``QuotaDegraded``,
fail mode closed: ``QuotaUnavailable``); ``warn`` lets it run and is noted as there.

A callback cannot change the model a run calls. So a ``downgrade`` is refused with
:class:`QuotaDowngradeRefused` (a ``QuotaExceeded`` whose message names the cheaper model the budget asks for):
letting the run through would make a budget avoidable by using another LangChain class. A model a routing rule
or an experiment's candidate arm chose (not a budget) is not applied: the run keeps its model, and its span says
so (requested and effective model alike, the control arm).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.quota.errors import Language, QuotaExceeded, QuotaVerdict, top_up_text
from tokenmeter.instrumentation.quota.gate import HOP_NOTICE_SINKS, QuotaGate
from tokenmeter.instrumentation.safety import contained

_DOWNGRADE: Final = "downgrade"


class QuotaDowngradeRefused(QuotaExceeded):
    """``downgrade`` for a LangChain run, which cannot switch models: the run was not made."""

    tokenmeter_error_type = "QuotaExceeded"  # error.type on the span, as for a deny

    def message(self, language: Language = "en") -> str:
        verdict = self.verdict
        if language == "zh":
            return (
                f"已达额度上限：{self._who('zh')}已使用 {verdict.usage_text('zh')}，超出后须改用较便宜的模型"
                f"“{verdict.effective_model}”；此 LangChain 模型类无法自动切换，请改用该模型，或等待 "
                f"{verdict.resets_text()} 重置。" + top_up_text(verdict, "zh")
            )
        return (
            f"Quota reached: {self._who('en')} has used {verdict.usage_text('en')}; past it calls must use the "
            f"cheaper model '{verdict.effective_model}', which this LangChain class cannot switch to: use that "
            f"model, or wait until it resets at {verdict.resets_text()}." + top_up_text(verdict, "en")
        )


class RunGate:
    """The process's quota gate, applied to LangChain runs (sync checks: a start event is a plain call)."""

    def __init__(self, gate: QuotaGate) -> None:
        self._gate = gate

    def check(self, call: LLMCall, request: dict[str, Any]) -> None:
        """Raise the QuotaError that stops the run, if any; a model swap is refused (downgrade) or undone."""
        checked = self._gate.check(call, request)
        requested = request.get("model")
        if checked.get("model") == requested:
            return
        verdict = call.quota_verdict
        with contained("LangChain run's model kept"):
            _keep_model(call, str(requested), verdict)
        if verdict is not None and verdict.action == _DOWNGRADE:
            refusal = QuotaDowngradeRefused(verdict)
            with contained("LangChain downgrade notice"):
                _notice_refusal(call, verdict)
            raise refusal


def _keep_model(call: LLMCall, requested: str, verdict: QuotaVerdict | None) -> None:
    """The call and its span back on the model the run calls (the gate put the one it chose there)."""
    call.request_model = requested
    span = call.span
    span.update_name(f"{call.operation} {requested}")
    span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, requested)
    if verdict is not None and verdict.action != _DOWNGRADE:  # routed or in an experiment: it runs unchanged
        span.set_attribute(semconv.TM_EFFECTIVE_MODEL, requested)
        if verdict.experiment_arm == semconv.ARM_CANDIDATE:
            span.set_attribute(semconv.TM_EXPERIMENT_ARM, semconv.ARM_CONTROL)


def _notice_refusal(call: LLMCall, verdict: QuotaVerdict) -> None:
    """The request's notices: the gate noted a downgrade, but the run was refused (told as a deny is)."""
    notices = HOP_NOTICE_SINKS.sink_for(call)
    if notices is None:
        return
    notices[:] = [noticed for noticed in notices if noticed is not verdict]
    notices.append(dataclasses.replace(verdict, action="deny"))
