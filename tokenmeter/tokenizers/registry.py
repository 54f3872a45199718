"""The tokenizer registry: model name -> its tokenizer, loaded once, or a labelled estimate.

Tokenizers are loaded on first use (or by ``preload``), once per tokenizer spec even
under concurrent first use, and cached for the life of the process
(:mod:`~tokenmeter.tokenizers.tokenizer_loading`). A tokenizer that cannot be loaded is
remembered as unavailable (no retry on every call); each model that falls back to the
estimate logs exactly one warning naming the model, the reason and how to configure it
(:mod:`~tokenmeter.tokenizers.model_tokenizers`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tokenmeter.catalog import ModelCatalog
from tokenmeter.log_once import LogOnce
from tokenmeter.semconv import SOURCE_ESTIMATE, SOURCE_TOKENIZER
from tokenmeter.settings import get_settings
from tokenmeter.tokenizers.backend import Tokenizer
from tokenmeter.tokenizers.chat_counting import (
    GENERIC_OVERHEAD_SUFFIX,
    OPENAI_FORMATS,
    count_generic,
    count_openai,
)
from tokenmeter.tokenizers.chatml import CHATML_FORMATS, render_chatml
from tokenmeter.tokenizers.estimate import ESTIMATE_LABEL, estimate_tokens
from tokenmeter.tokenizers.messages import ChatMessage, read_messages
from tokenmeter.tokenizers.model_tokenizers import ModelTokenizers, warn_once
from tokenmeter.tokenizers.token_count import TokenCount
from tokenmeter.tokenizers.tokenizer_loading import TokenizerLoader

logger = logging.getLogger("tokenmeter.tokenizers")


class TokenizerRegistry:
    """Counts tokens for model names using the catalog's tokenizers. Thread-safe."""

    def __init__(self, catalog: ModelCatalog, allow_download: bool = False) -> None:
        self._catalog = catalog
        self._warnings = LogOnce(logger)
        self._models = ModelTokenizers(catalog, TokenizerLoader(allow_download), self._warnings)

    @property
    def catalog(self) -> ModelCatalog:
        return self._catalog

    def preload(self, models: Iterable[str]) -> None:
        """Load the tokenizers of ``models`` now (warning once for those that fall back)."""
        for model in models:
            self._models.tokenizer_for(model)

    # --- counting ------------------------------------------------------------------------

    def count_text(self, model: str, text: str) -> TokenCount:
        """Tokens of plain text, no special tokens added."""
        tokenizer = self._models.tokenizer_for(model)
        if tokenizer is None:
            return TokenCount(estimate_tokens(text), SOURCE_ESTIMATE, ESTIMATE_LABEL)
        return TokenCount(tokenizer.count_text(text), SOURCE_TOKENIZER, tokenizer.label)

    def count_prompt(self, model: str, prompt: str) -> TokenCount:
        """Tokens of a completions-API prompt as the server encodes it (BOS if the tokenizer adds one)."""
        tokenizer = self._models.tokenizer_for(model)
        if tokenizer is None:
            return TokenCount(estimate_tokens(prompt), SOURCE_ESTIMATE, ESTIMATE_LABEL)
        return TokenCount(tokenizer.count_prompt(prompt), SOURCE_TOKENIZER, tokenizer.label)

    def count_messages(self, model: str, messages: Sequence[Mapping[str, Any] | Any]) -> TokenCount:
        """Tokens of chat input as the server sees it, generation prompt included.

        Raises TypeError/ValueError for messages that are not chat messages.
        """
        chat = read_messages(messages)
        tokenizer = self._models.tokenizer_for(model)
        if tokenizer is None:
            return TokenCount(
                count_generic(estimate_tokens, chat),
                SOURCE_ESTIMATE,
                ESTIMATE_LABEL + GENERIC_OVERHEAD_SUFFIX,
            )
        entry = self._catalog.lookup(model)
        chat_format = entry.chat_format if entry is not None else None
        if chat_format in OPENAI_FORMATS:
            return TokenCount(count_openai(tokenizer.count_text, chat, chat_format), SOURCE_TOKENIZER, tokenizer.label)
        if chat_format in CHATML_FORMATS:
            rendered = render_chatml(chat, chat_format)
            return TokenCount(tokenizer.count_rendered(rendered), SOURCE_TOKENIZER, tokenizer.label)
        if chat_format in (None, "template"):
            templated = self._count_with_template(model, tokenizer, chat)
            if templated is not None:
                return TokenCount(templated, SOURCE_TOKENIZER, tokenizer.label)
        return TokenCount(
            count_generic(tokenizer.count_text, chat),
            SOURCE_TOKENIZER,
            tokenizer.label + GENERIC_OVERHEAD_SUFFIX,
        )

    def _count_with_template(self, model: str, tokenizer: Tokenizer, chat: Sequence[ChatMessage]) -> int | None:
        try:
            return tokenizer.count_chat_template([message.as_template_message() for message in chat])
        except Exception as exc:  # a Jinja template may raise anything (raise_exception(...), bad roles)
            warn_once(
                self._warnings,
                model,
                "template",
                f"tokenmeter: the chat template of model {model!r} ({tokenizer.label}) failed on "
                f"these messages ({type(exc).__name__}: {exc}); counting them as text plus a generic "
                "per-message overhead.",
            )
            return None


_registry_lock = threading.Lock()


@functools.cache
def _build_registry() -> TokenizerRegistry:
    settings = get_settings()
    return TokenizerRegistry(ModelCatalog.load(settings.models), allow_download=settings.allow_download)


def get_registry() -> TokenizerRegistry:
    """The process-wide registry, built once from ``get_settings()``.

    Raises ``CatalogError`` when the TOKENMETER_MODELS file is unreadable or invalid
    (callers inside a host application log it and go on without metering).
    """
    with _registry_lock:
        return _build_registry()
