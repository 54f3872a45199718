"""A November of calls for the waste report's tests, put through the real OTLP ingest into llm_usage.

The spans are built with the real opentelemetry-proto classes and inserted the way serve's receiver inserts
them (``insert_payloads``), so the ingest views fill llm_usage. ``NOVEMBER_CALLS`` is the month the tests
compute their expected findings from by hand (the comments say what each call is there for).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from otlp_requests import span, traces_request

from tokenmeter import semconv
from tokenmeter.collector.ingest_queue import IngestSchema, insert_payloads
from tokenmeter.collector.payloads import Signal, decode_protobuf

T0: Final = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
HOSTILE_USER: Final = "o'brien\"; DROP TABLE llm_usage; --"
H1: Final = "h'1\\"  # a hostile prompt hash
SMALL, LARGE, UNKNOWN = "qwen-7b", "deepseek-chat", "mystery-model"
POLICY_ROUTING: Final = """
routing:
  tiers:
    - {name: small, model: qwen-7b}
    - {name: large, model: deepseek-chat}
  critical_apps: [legal-qa]
  intents:
    - {name: lookup, keywords: ["what is"]}
  rules:
    - name: short-lookup
      when: {intent: [lookup], question_chars: {max: 80}, passages: {min: 1}}
      tier: small
    - name: brownout
      when: {budget_left: {max: 0.2}}
      down: 1
    - name: legal-stay
      when: {apps: [legal-qa]}
      tier: small
    - name: long
      when: {input_tokens: {min: 2500}}
      tier: large
"""


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class WasteCall:
    """One LLM call's span, as the instrumentation writes it (only what llm_usage reads)."""

    user: str
    seconds: float  # after T0
    model: str = SMALL
    prompt_hash: str = ""
    input_tokens: int = 1000
    output_tokens: int = 100
    cost: str | None = "0.5"  # None: unpriced
    currency: str = "CNY"
    department: str = "研发部"
    app: str = "kb"
    operation: str = "chat"
    features: dict[str, Any] | None = None  # routing features (semconv name -> value)
    stream: bool | None = None  # None: not streamed; False: read to the end; True: not read to the end
    extra: dict[str, Any] | None = None
    moment: datetime | None = None  # instead of T0 + seconds

    def span_attributes(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: self.operation,
            semconv.TM_APP: self.app,
            semconv.ENDUSER_ID: self.user,
            semconv.TM_DEPARTMENT: self.department,
            semconv.GEN_AI_REQUEST_MODEL: self.model,
            semconv.GEN_AI_USAGE_INPUT_TOKENS: self.input_tokens,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: self.output_tokens,
            semconv.TM_COST_UNPRICED: self.cost is None,
        }
        if self.cost is not None:
            found |= {semconv.TM_COST: self.cost, semconv.TM_COST_CURRENCY: self.currency}
        if self.prompt_hash:
            found[semconv.TM_PROMPT_HASH] = self.prompt_hash
        if self.stream is not None:
            found |= {semconv.TM_STREAM: True} | ({semconv.TM_STREAM_INCOMPLETE: True} if self.stream else {})
        return found | (self.features or {}) | (self.extra or {})


def features(prompt: int, question: int, route: str = "", **more: Any) -> dict[str, Any]:
    found = {semconv.TM_PROMPT_CHARS: prompt, semconv.TM_QUESTION_CHARS: question, semconv.TM_CONVERSATION_DEPTH: 1}
    return found | ({semconv.TM_APP_ROUTE: route} if route else {}) | more


KB_CHAT: Final = features(1000, 100, "/chat/kb_chat")
LOOKUP: Final = features(900, 50, "/chat/kb_chat", **{semconv.TM_ROUTE_INTENT: "lookup",
                                                       semconv.TM_RETRIEVAL_PASSAGES: 2,
                                                       semconv.TM_RETRIEVAL_TOP_SCORE: 0.8})  # fmt: skip
CACHE_HIT: Final = {semconv.TM_CACHE_HIT: True, semconv.TM_CACHE_SAVED_INPUT_TOKENS: 1000,
                    semconv.TM_CACHE_SAVED_OUTPUT_TOKENS: 100, semconv.TM_CACHE_SAVED_COST: "0.5"}  # fmt: skip

NOVEMBER_CALLS: Final = [
    # H1 in kb by alice (a retry at +30 s) and bob: five calls with features, no intent
    *(WasteCall("alice", s, prompt_hash=H1, features=KB_CHAT) for s in (0, 30, 1000, 4000)),
    WasteCall("bob", 5000, prompt_hash=H1, features=KB_CHAT),
    # H1 again, from legal-qa (a critical app): a replayed cache hit across apps, matched by legal-stay, not moved
    WasteCall("grace", 2000, prompt_hash=H1, app="legal-qa", department="法务部",
              features=features(400, 200, "/chat/chat")),
    # H2: carol's lookups on the large model, streamed; the first not read to the end; short-lookup moves them
    WasteCall("carol", 0, LARGE, "H2", 3000, 200, "1.0", "USD", features=LOOKUP, stream=True),
    WasteCall("carol", 7200, LARGE, "H2", 3000, 200, "1.0", "USD", features=LOOKUP, stream=False),
    WasteCall("erin", 0, prompt_hash="H3", input_tokens=500, output_tokens=50, cost="0.25"),  # once only
    # H4: dave's unpriced model, streamed (the last not read to the end), a retry at +60 s
    *(WasteCall("dave", s, UNKNOWN, "H4", 800, 80, None, stream=s == 7000) for s in (0, 60, 7000)),
    # H5: a hostile user id, a retry exactly at the window (120 s)
    WasteCall(HOSTILE_USER, 10000, prompt_hash="H5"), WasteCall(HOSTILE_USER, 10120, prompt_hash="H5"),
    # sales: "heavy" sends 4000 input tokens per call, the department 27000 / 26; "few" has one call
    *(WasteCall("light", 20000 + n, input_tokens=100, output_tokens=10, cost="0.01", department="sales")
      for n in range(20)),
    *(WasteCall("heavy", 30000 + n, input_tokens=4000, output_tokens=10, cost="0.02", department="sales")
      for n in range(5)),
    WasteCall("few", 40000, input_tokens=5000, output_tokens=10, cost="0.02", department="sales"),
    # in an experiment: never routed
    WasteCall("zed", 41000, LARGE, input_tokens=100, output_tokens=10, cost="0.2", currency="USD", department="ops",
              features=features(100, 50), extra={semconv.TM_EXPERIMENT: "exp1", semconv.TM_EXPERIMENT_ARM: "control"}),
    # not in the findings: two cache hits (counted apart), a refused call, an embedding, a call in October
    *(WasteCall("alice", s, prompt_hash=H1, input_tokens=0, output_tokens=0, cost="0", extra=CACHE_HIT)
      for s in (100, 200)),
    WasteCall("alice", 10, prompt_hash=H1, extra={semconv.ERROR_TYPE: "QuotaExceeded"}),
    WasteCall("alice", 20, "bge-m3", H1, operation="embeddings"),
    WasteCall("alice", 0, prompt_hash=H1, moment=datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)),
]  # fmt: skip


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def store_waste_calls(client: Any, calls: list[WasteCall] = NOVEMBER_CALLS) -> None:
    """The calls' spans, one export request each, in one insert."""
    requests = []
    for number, call in enumerate(calls, start=1):
        one = span(f"{call.operation} {call.model}", number * 2, _nanos(call.moment or at(call.seconds)),
                   call.span_attributes())  # fmt: skip
        requests.append(traces_request([one], service=call.app, scope=semconv.INSTRUMENTATION_SCOPE))
    payloads = [decode_protobuf(Signal.TRACES, request.SerializeToString()) for request in requests]
    insert_payloads(client, Signal.TRACES, payloads, IngestSchema.for_store(embedded=True))
