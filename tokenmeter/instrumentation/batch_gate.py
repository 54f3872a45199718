"""The quota check of a batch at submission: each model's requests checked as one call, before the batch is created.

The estimate of a model's share of the batch is its requests' input (estimated as the quota gate estimates any
call's) and the sum of their output limits (``max_tokens`` and its kin; when a request gives none, the enforcer's
default for one call stands for them all). ``deny`` / ``degrade`` raise the chat path's errors before the batch
is created; a ``downgrade`` (or a routed or candidate model) sends that model's requests to the model the verdict
names: the caller rewrites the input file.

The checked "calls" are never recorded: they have no span of their own (a non-recording one in the current trace,
which the gate writes its decision to), no usage and no bill; the decision is counted in
``tokenmeter.quota.decisions``. Their reservations are released once the batch is submitted (`release`): a
batch's spend reaches the budgets when its results are read and metered, one call per result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from tokenmeter import semconv
from tokenmeter.instrumentation.attribution import current_attribution
from tokenmeter.instrumentation.batch_lines import ENDPOINT_OPERATIONS, output_limit, request_bodies, request_input
from tokenmeter.instrumentation.llm_call import LLMCall
from tokenmeter.instrumentation.quota.gate import QuotaGate
from tokenmeter.instrumentation.safety import contained


@dataclass(frozen=True)
class ModelShare:
    """One model's requests in a batch, as one check: what they send, and their total output limit."""

    model: str
    inputs: list[Any]
    max_output: int | None  # None: a request gives no limit (the enforcer's default for one call stands)

    def check_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model}
        if self.max_output is not None:
            kwargs["max_tokens"] = self.max_output
        return kwargs


def model_shares(data: bytes, endpoint: str) -> list[ModelShare]:
    """The batch's requests by model (in model order, so checks run in a stable order)."""
    operation = ENDPOINT_OPERATIONS.get(endpoint, semconv.OPERATION_CHAT)
    inputs: dict[str, list[Any]] = {}
    limits: dict[str, int | None] = {}
    for body in request_bodies(data):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            continue
        inputs.setdefault(model, []).append(request_input(operation, body, endpoint == "/v1/responses"))
        limit, total = output_limit(body), limits.get(model, 0)
        limits[model] = None if limit is None or total is None else total + limit
    if operation == semconv.OPERATION_EMBEDDINGS:
        limits = dict.fromkeys(inputs, 0)
    return [ModelShare(model, inputs[model], limits[model]) for model in sorted(inputs)]


@dataclass
class SubmissionCheck:
    """The checks of one batch submission: model swaps to make, and reservations to release after it."""

    gate: QuotaGate
    endpoint: str
    swaps: dict[str, str] = field(default_factory=dict, init=False)  # model -> the model to send instead
    checked: list[LLMCall] = field(default_factory=list, init=False)  # the checks, whose reservations to release

    def check(self, data: bytes) -> dict[str, str]:
        """Check each model's share; the models to swap (raises the gate's QuotaError to stop the batch)."""
        for share in model_shares(data, self.endpoint):
            call = self._call(share)
            if call is not None:
                self._swapped(share, self.gate.check(call, share.check_kwargs()))
        return self.swaps

    async def check_async(self, data: bytes) -> dict[str, str]:
        for share in model_shares(data, self.endpoint):
            call = self._call(share)
            if call is not None:
                self._swapped(share, await self.gate.check_async(call, share.check_kwargs()))
        return self.swaps

    def _call(self, share: ModelShare) -> LLMCall | None:
        """A call that is checked and never recorded (no end, so no request's cost header waits for its bill)."""
        with contained("batch check start"):
            span = trace.NonRecordingSpan(trace.get_current_span().get_span_context())
            call = LLMCall(
                operation=ENDPOINT_OPERATIONS.get(self.endpoint, semconv.OPERATION_CHAT),
                request_model=share.model,
                provider=semconv.PROVIDER_OPENAI,
                span=span,
                attribution=current_attribution(),
                start_ns=time.time_ns(),
                request_input=share.inputs,
            )
            self.checked.append(call)
            return call
        return None

    def _swapped(self, share: ModelShare, kwargs: dict[str, Any]) -> None:
        model = kwargs.get("model")
        if isinstance(model, str) and model and model != share.model:
            self.swaps[share.model] = model

    def release(self) -> None:
        """The batch is submitted (or failed to be): every reservation its checks hold goes back."""
        for call in self.checked:
            if call.on_finished is not None:
                with contained("batch check release"):
                    call.on_finished()
        self.checked.clear()
