"""The labelled estimate used when no tokenizer can be had.

Rule: every CJK ideograph, kana, hangul syllable or jamo, CJK punctuation mark and
full-width form counts 1 token; all other characters (Latin letters, digits,
punctuation, spaces, emoji...) count 1 token per 4 characters, rounded up. Non-empty
text is therefore never 0 tokens. BPE tokenizers trained on Chinese (Qwen, GLM,
DeepSeek) give roughly one token per common Chinese character or less, and about four
characters per token of English; the estimate is meant to be in the right range, not
exact, and is always labelled ``source=estimate``.
"""

from __future__ import annotations

import re
from typing import Final

# Inclusive code point ranges counted as one token per character.
CJK_RANGES: Final[tuple[tuple[int, int], ...]] = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x31FF),  # Bopomofo, Hangul compatibility jamo, Kanbun, Katakana extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xA960, 0xA97F),  # Hangul Jamo Extended-A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo Extended-B
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # Half-width and full-width forms
    (0x20000, 0x3134F),  # CJK Extensions B to G, compatibility supplement
)
CHARS_PER_TOKEN: Final = 4
ESTIMATE_LABEL: Final = "estimate"
_CJK_CHAR: Final = re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in CJK_RANGES) + "]")


def is_cjk(char: str) -> bool:
    return _CJK_CHAR.fullmatch(char) is not None


def estimate_tokens(text: str) -> int:
    """CJK characters count 1 each; the rest ``ceil(chars / 4)``."""
    cjk = sum(1 for _ in _CJK_CHAR.finditer(text))
    other = len(text) - cjk
    return cjk + -(-other // CHARS_PER_TOKEN)
