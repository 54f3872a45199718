"""Counting a call's tokens on this side: with the model's own tokenizer, or a labelled estimate.

Pure functions over the request as metering captured it (chat messages, or a list
of prompts / embedding inputs whose items are text or pre-tokenized ids) and the
output texts. The quota check's pre-call estimate lives here too, beside the
estimate a failed tokenizer count falls back to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenmeter import semconv
from tokenmeter.instrumentation.content_hash import canonical_json
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry
from tokenmeter.tokenizers.estimate import ESTIMATE_LABEL, estimate_tokens

# The tokenizer label of pre-tokenized input: the ids are the tokens.
IDS_LABEL = "ids"


@dataclass(frozen=True)
class LocalCounts:
    """A call's tokens as counted here; ``source`` is tokenizer or estimate (if any part was estimated)."""

    input_tokens: int
    output_tokens: int
    source: str
    tokenizer: str


def count_locally(
    registry: TokenizerRegistry, model: str, operation: str, request_input: Any, output_texts: Sequence[str]
) -> LocalCounts:
    """Count with ``model``'s tokenizer (the registry falls back to a labelled estimate without one).

    Raises TypeError/ValueError for chat input that is not chat messages.
    """
    counts: list[TokenCount] = []
    if operation == semconv.OPERATION_CHAT:
        counts.append(registry.count_messages(model, request_input))
    else:
        for item in request_input:
            if isinstance(item, str):
                counts.append(registry.count_prompt(model, item))
            else:  # pre-tokenized input: the ids are the tokens
                counts.append(TokenCount(tokens=len(item), source=semconv.SOURCE_TOKENIZER, tokenizer=IDS_LABEL))
    input_tokens = sum(c.tokens for c in counts)
    output_counts = [registry.count_text(model, text) for text in output_texts if text]
    counts.extend(output_counts)
    source = (
        semconv.SOURCE_ESTIMATE
        if any(c.source == semconv.SOURCE_ESTIMATE for c in counts)
        else semconv.SOURCE_TOKENIZER
    )
    tokenizer = next((c.tokenizer for c in counts if c.tokenizer != IDS_LABEL), IDS_LABEL)
    return LocalCounts(input_tokens, sum(c.tokens for c in output_counts), source, tokenizer)


def estimate_locally(request_input: Any, output_texts: Sequence[str]) -> LocalCounts:
    """Last resort when the tokenizer path failed on this input: a labelled estimate."""
    input_tokens = estimate_tokens(canonical_json(request_input))
    output_tokens = sum(estimate_tokens(text) for text in output_texts)
    return LocalCounts(input_tokens, output_tokens, semconv.SOURCE_ESTIMATE, ESTIMATE_LABEL)


def request_token_estimate(request_input: Any) -> int:
    """The quota check's estimate of a request's input tokens, made on the caller's thread before the call.

    Cheap on purpose (no tokenizer): an estimate is enough to reserve; the bill uses the real count.
    """
    return estimate_tokens(json.dumps(request_input, ensure_ascii=False, default=str))
