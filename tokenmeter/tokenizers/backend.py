"""What every tokenizer backend offers, and how a backend says it cannot load."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tokenmeter.errors import TokenmeterError

LOCAL_DIRECTORY_FIX = (
    "add an entry for this model to your TOKENMETER_MODELS catalog file with tokenizer.path set to "
    "the model's local directory (the one with tokenizer_config.json); see docs/catalog.md"
)


class TokenizerUnavailable(TokenmeterError):  # noqa: N818 - a result ("unavailable"), remembered per tokenizer
    """A tokenizer that cannot be loaded here: ``reason`` says why, ``fix`` what to do."""

    def __init__(self, reason: str, fix: str = LOCAL_DIRECTORY_FIX) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class Tokenizer(Protocol):
    """A loaded tokenizer. Implementations are safe to call from several threads."""

    @property
    def label(self) -> str:
        """Human-readable id, e.g. ``tiktoken:cl100k_base``."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of plain text; no BOS/EOS or other special tokens added."""
        ...

    def count_prompt(self, text: str) -> int:
        """Tokens of a completions-API prompt as the server encodes it (BOS etc. if the tokenizer adds it)."""
        ...

    def count_rendered(self, text: str) -> int:
        """Tokens of text rendered from a chat format; special-token strings count as special tokens."""
        ...

    def count_chat_template(self, messages: Sequence[dict[str, Any]]) -> int | None:
        """Tokens of the tokenizer's own chat template with a generation prompt; None without one."""
        ...
