"""A tokenizer backed by a ``tiktoken.Encoding`` (OpenAI encodings and BPE files such as Qwen's)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tiktoken


@dataclass(frozen=True)
class TiktokenTokenizer:
    """``specials_in_text``: whether special-token strings inside plain text encode as special tokens.

    OpenAI treats them as ordinary text (``encode_ordinary``); Qwen's tokenizer, like
    Hugging Face added tokens, recognises them (``allowed_special="all"``).
    """

    encoding: tiktoken.Encoding
    label: str
    specials_in_text: bool = False
    normalize: Literal["NFC", "NFKC"] | None = None

    def _prepare(self, text: str) -> str:
        return unicodedata.normalize(self.normalize, text) if self.normalize else text

    def count_text(self, text: str) -> int:
        text = self._prepare(text)
        if self.specials_in_text:
            return len(self.encoding.encode(text, allowed_special="all"))
        return len(self.encoding.encode_ordinary(text))

    def count_prompt(self, text: str) -> int:
        # tiktoken-based models add no BOS to a prompt.
        return self.count_text(text)

    def count_rendered(self, text: str) -> int:
        return len(self.encoding.encode(self._prepare(text), allowed_special="all"))

    def count_chat_template(self, messages: Sequence[dict[str, Any]]) -> int | None:
        return None


def counted_without_the_gil(label: str) -> bool:
    """Whether the tokenizer labelled ``label`` let other threads run while it counted.

    tiktoken's encoder releases the GIL; Hugging Face tokenizers' ``encode`` holds it (checked:
    a spinning thread barely advanced during a 7 s encode).
    """
    return label.startswith(("tiktoken:", "tiktoken-file:"))
