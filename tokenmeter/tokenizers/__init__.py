"""Token counting with each model's own tokenizer, or a labelled estimate.

``import tokenmeter.tokenizers`` is light: tiktoken is imported, transformers only
when a Hugging Face tokenizer is actually loaded.
"""

from tokenmeter.tokenizers.backend import Tokenizer, TokenizerUnavailable
from tokenmeter.tokenizers.estimate import estimate_tokens
from tokenmeter.tokenizers.registry import TokenizerRegistry, get_registry
from tokenmeter.tokenizers.token_count import TokenCount

__all__ = [
    "TokenCount",
    "Tokenizer",
    "TokenizerRegistry",
    "TokenizerUnavailable",
    "estimate_tokens",
    "get_registry",
]
