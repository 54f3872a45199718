"""A November of DeepSeek calls and the DeepSeek export built to differ from them in known ways, for the
reconciliation's tests (tests/test_reconcile_report.py, tests/test_reconcile_panels.py). The calls' spans go
through the real OTLP ingest into llm_usage (tests/support/waste_calls.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from waste_calls import WasteCall

from tokenmeter import semconv

CACHE_READ, REASONING = semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def call(
    user: str, model: str, moment: datetime, tokens: tuple[int, int], cost: str, currency: str = "CNY", **extra: Any
) -> WasteCall:
    """One call's span: ``extra`` are span attributes (semconv names)."""
    return WasteCall(
        user,
        0,
        model,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=cost,
        currency=currency,
        moment=moment,
        extra=extra,
    )


DEEPSEEK_CALLS = [
    call("alice", "deepseek-chat", at(3), (1000, 200), "0.0123", **{CACHE_READ: 600}),
    call("bob", "deepseek-chat", at(3, 11), (500, 100), "0.0045"),
    call("bob", "deepseek-chat", at(3, 12), (0, 0), "0", **{semconv.ERROR_TYPE: "APITimeoutError"}),  # no request
    call("dave", "deepseek-reasoner", at(3, 12), (800, 1200), "0.0250", **{REASONING: 900}),
    call("alice", "deepseek-chat", at(4), (2000, 400), "0.0100", **{CACHE_READ: 1500}),
    call("carol", "deepseek-chat", at(5), (300, 30), "0.0009"),  # the provider has no 5 November
    # Not the provider's calls, or not in November:
    call("alice", "deepseek-chat", at(3, 13), (5000, 500), "0.05", **{semconv.TM_CACHE_HIT: True}),  # answer cache
    call("alice", "deepseek-chat", at(3, 14), (700, 0), "0.001", **{semconv.ERROR_TYPE: "QuotaExceeded"}),  # refused
    call("erin", "qwen-max", at(3), (100, 10), "0.0003"),  # DashScope's
    call("frank", "deepseek-r1:7b", at(3), (100, 10), "0.0002", **{semconv.TM_COST_VIRTUAL: True}),  # self-hosted
    call("alice", "deepseek-chat", datetime(2026, 10, 31, 23, 59, tzinfo=UTC), (100, 10), "0.0003"),
    call("alice", "deepseek-chat", datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC), (100, 10), "0.0003"),
]
AMOUNT = """user_id,utc_date,model,api_key_name,api_key,type,price,amount
u-1,2026-11-03,deepseek-chat,kb,sk-a***1,request_count,,1
u-1,2026-11-03,deepseek-chat,kb,sk-a***1,input_cache_hit_tokens,0.2,600
u-1,2026-11-03,deepseek-chat,kb,sk-a***1,input_cache_miss_tokens,2,400
u-1,2026-11-03,deepseek-chat,kb,sk-a***1,output_tokens,3,200
u-1,2026-11-03,deepseek-chat,ops,sk-b***2,request_count,,1
u-1,2026-11-03,deepseek-chat,ops,sk-b***2,input_cache_miss_tokens,2,500
u-1,2026-11-03,deepseek-chat,ops,sk-b***2,output_tokens,3,100
u-1,2026-11-03,DeepSeek-Reasoner,kb,sk-a***1,request_count,,1
u-1,2026-11-03,DeepSeek-Reasoner,kb,sk-a***1,input_cache_miss_tokens,4,800
u-1,2026-11-03,DeepSeek-Reasoner,kb,sk-a***1,output_tokens,16,1200
u-1,2026-11-04,deepseek-chat,kb,sk-a***1,request_count,,1
u-1,2026-11-04,deepseek-chat,kb,sk-a***1,input_cache_hit_tokens,0.2,1400
u-1,2026-11-04,deepseek-chat,kb,sk-a***1,input_cache_miss_tokens,2,600
u-1,2026-11-04,deepseek-chat,kb,sk-a***1,output_tokens,3,450
u-1,2026-11-06,deepseek-coder,kb,sk-a***1,request_count,,3
u-1,2026-11-06,deepseek-coder,kb,sk-a***1,input_cache_miss_tokens,1,100
u-1,2026-11-06,deepseek-coder,kb,sk-a***1,output_tokens,2,10
"""
COST = """user_id,utc_date,model,wallet_type,cost,currency
u-1,2026-11-03,deepseek-chat,Paid,0.0168,CNY
u-1,2026-11-03,DeepSeek-Reasoner,Paid,0.0250,CNY
u-1,2026-11-04,deepseek-chat,Paid,0.0110,CNY
u-1,2026-11-06,deepseek-coder,Paid,0.0002,CNY
"""
