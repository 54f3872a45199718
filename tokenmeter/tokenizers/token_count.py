"""A token count and where it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCount:
    """``tokens`` counted by ``tokenizer`` (a human-readable id).

    ``source`` is ``semconv.SOURCE_TOKENIZER`` when the model's own tokenizer counted,
    ``semconv.SOURCE_ESTIMATE`` when no tokenizer could be had. ``tokenizer`` reads
    e.g. ``tiktoken:cl100k_base``, ``tiktoken-file:qwen.tiktoken``, ``hf:/models/glm-4``
    or ``estimate``; a ``+generic-overhead`` suffix marks chat counts that add the
    documented per-message overhead instead of rendering the model's chat format.
    """

    tokens: int
    source: str
    tokenizer: str
