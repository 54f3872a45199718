"""What the model catalog says about one model pattern: tokenizer, chat format, price."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

from tokenmeter.pricing import Price, PriceSchedule

TokenizerKind = Literal["tiktoken", "tiktoken_file", "huggingface"]
TOKENIZER_KINDS: Final[tuple[str, ...]] = ("tiktoken", "tiktoken_file", "huggingface")

# How chat messages become the tokens the server sees (see docs/catalog.md):
#   openai           OpenAI cookbook rule: 3 per message, +1 per name, +3 reply priming
#   openai-0301      gpt-3.5-turbo-0301: 4 per message, -1 per name, +3 reply priming
#   chatml           ChatML, default system "You are a helpful assistant." (Qwen 1, 1.5, 2)
#   chatml-qwen2.5   ChatML, Qwen2.5 default system prompt and tool-call format
#   chatml-nosystem  ChatML, no default system; <think> blocks dropped from history (Qwen3)
#   chatml-think     as chatml-nosystem, and the reply opens with "<think>\n" (Qwen3.5/3.6, QwQ)
#   template         the Hugging Face tokenizer's own chat template (huggingface kind only)
#   generic          text counts plus a small documented per-message overhead
# None means: the tokenizer's chat template if it has one, else generic.
CHAT_FORMATS: Final[tuple[str, ...]] = (
    "openai",
    "openai-0301",
    "chatml",
    "chatml-qwen2.5",
    "chatml-nosystem",
    "chatml-think",
    "template",
    "generic",
)

BUILTIN_ORIGIN: Final = "builtin"


@dataclass(frozen=True)
class TokenizerSpec:
    """Where a model's tokenizer comes from. Hashable: it is the tokenizer cache key.

    - ``tiktoken``: ``encoding`` is a tiktoken encoding name (cl100k_base, o200k_base).
    - ``tiktoken_file``: ``path`` lists candidate BPE files (a file path or a
      ``package:<import name>/<relative path>`` reference; the first that exists wins),
      ``pat_str`` is the split pattern, ``special_tokens`` the (token, id) pairs and
      ``normalize`` an optional Unicode normalisation applied before encoding.
    - ``huggingface``: ``path`` lists candidate local model directories or
      ``tokenizer.json`` files (or package references), ``hub_id`` a Hugging Face hub
      id read from the local cache (downloaded only with TOKENMETER_ALLOW_DOWNLOAD);
      ``trust_remote_code`` allows the model directory's own tokenizer code;
      ``chat_template`` supplies or replaces the tokenizer's Jinja chat template.
    """

    kind: TokenizerKind
    encoding: str | None = None
    path: tuple[str, ...] = ()
    pat_str: str | None = None
    special_tokens: tuple[tuple[str, int], ...] = ()
    normalize: Literal["NFC", "NFKC"] | None = None
    hub_id: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None

    def describe(self) -> dict[str, object]:
        """The non-empty fields, for listings (long strings shortened)."""
        out: dict[str, object] = {"kind": self.kind}
        if self.encoding:
            out["encoding"] = self.encoding
        if self.path:
            out["path"] = list(self.path)
        if self.special_tokens:
            out["special_tokens"] = {"first_id": self.special_tokens[0][1], "count": len(self.special_tokens)}
        if self.normalize:
            out["normalize"] = self.normalize
        if self.hub_id:
            out["hub_id"] = self.hub_id
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        if self.chat_template:
            out["chat_template"] = f"<{len(self.chat_template)} characters>"
        return out


@dataclass(frozen=True)
class PriceSource:
    """Where one price of an entry comes from and the day it was last checked there (both optional)."""

    source: str | None = None
    checked: date | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One catalog entry. ``pattern`` is a glob (``qwen2.5-*``) or ``re:<regex>``."""

    pattern: str
    provider: str | None
    tokenizer: TokenizerSpec | None
    chat_format: str | None
    prices: PriceSchedule | None  # the model's prices over time; None: unpriced
    note: str | None
    origin: str = BUILTIN_ORIGIN  # "builtin" or the user catalog file it came from
    price_sources: tuple[PriceSource, ...] = ()  # one per price of ``prices``, in the same order (from a file)

    def price_at(self, when: datetime) -> Price | None:
        """The price valid at ``when`` (timezone-aware); None without prices or before the first dated one."""
        return self.prices.at(when) if self.prices is not None else None

    @property
    def price(self) -> Price | None:
        """The price valid now."""
        return self.prices.current() if self.prices is not None else None
