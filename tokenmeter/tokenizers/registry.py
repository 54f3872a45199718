"""The tokenizer registry: model name -> its tokenizer, loaded once, or a labelled estimate.

Tokenizers are loaded on first use (or by ``preload``), once per tokenizer spec even
under concurrent first use, and cached for the life of the process. A tokenizer that
cannot be loaded is remembered as unavailable (no retry on every call); each model
that falls back to the estimate logs exactly one warning naming the model, the reason
and how to configure it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from tokenmeter.catalog import ModelCatalog, ModelEntry, TokenizerSpec
from tokenmeter.log_once import LogOnce
from tokenmeter.semconv import SOURCE_ESTIMATE, SOURCE_TOKENIZER
from tokenmeter.settings import get_settings
from tokenmeter.tokenizers.backend import LOCAL_DIRECTORY_FIX, Tokenizer, TokenizerUnavailable
from tokenmeter.tokenizers.chat_counting import (
    GENERIC_OVERHEAD_SUFFIX,
    OPENAI_FORMATS,
    count_generic,
    count_openai,
)
from tokenmeter.tokenizers.chatml import CHATML_FORMATS, render_chatml
from tokenmeter.tokenizers.estimate import ESTIMATE_LABEL, estimate_tokens
from tokenmeter.tokenizers.messages import ChatMessage, read_messages
from tokenmeter.tokenizers.tiktoken_encodings import load_tiktoken_encoding
from tokenmeter.tokenizers.tiktoken_files import load_tiktoken_file
from tokenmeter.tokenizers.token_count import TokenCount

logger = logging.getLogger("tokenmeter.tokenizers")
_MODEL_CACHE_SIZE: Final = 4096  # model names remembered; tokenizers themselves are never evicted

_UNKNOWN_MODEL_FIX: Final = (
    "add an entry matching this model to your TOKENMETER_MODELS catalog file, with a tokenizer "
    "(tokenizer.path = the model's local directory, the one with tokenizer_config.json) and a price; "
    "see docs/catalog.md"
)


def load_tokenizer(spec: TokenizerSpec, allow_download: bool) -> Tokenizer:
    """Load the tokenizer ``spec`` describes; raises TokenizerUnavailable."""
    if spec.kind == "tiktoken":
        if spec.encoding is None:
            raise TokenizerUnavailable("tokenizer.encoding is missing", fix="set tokenizer.encoding")
        return load_tiktoken_encoding(spec.encoding)
    if spec.kind == "tiktoken_file":
        return load_tiktoken_file(spec)
    from tokenmeter.tokenizers.huggingface import load_huggingface  # keeps transformers out of import time

    return load_huggingface(spec, allow_download)


class TokenizerRegistry:
    """Counts tokens for model names using the catalog's tokenizers. Thread-safe."""

    def __init__(self, catalog: ModelCatalog, allow_download: bool = False) -> None:
        self._catalog = catalog
        self._allow_download = allow_download
        self._lock = threading.Lock()
        self._spec_locks: dict[TokenizerSpec, threading.Lock] = {}
        self._loaded: dict[TokenizerSpec, Tokenizer | TokenizerUnavailable] = {}
        self._by_model: dict[str, Tokenizer | None] = {}
        self._warnings = LogOnce(logger)

    @property
    def catalog(self) -> ModelCatalog:
        return self._catalog

    # --- loading -------------------------------------------------------------------------

    def _load_spec(self, spec: TokenizerSpec, model: str) -> Tokenizer | TokenizerUnavailable:
        loaded = self._loaded.get(spec)
        if loaded is not None:
            return loaded
        with self._lock:
            spec_lock = self._spec_locks.setdefault(spec, threading.Lock())
        with spec_lock:
            loaded = self._loaded.get(spec)
            if loaded is None:
                started = time.perf_counter()
                try:
                    loaded = load_tokenizer(spec, self._allow_download)
                except TokenizerUnavailable as unavailable:
                    loaded = unavailable
                else:
                    logger.debug(
                        "loaded tokenizer %s for model %r in %.2f s",
                        loaded.label,
                        model,
                        time.perf_counter() - started,
                    )
                self._loaded[spec] = loaded
        return loaded

    def _warn_once(self, model: str, topic: str, message: str) -> None:
        self._warnings.warning((model.strip().lower(), topic), message)

    def _resolve(self, model: str, entry: ModelEntry | None) -> Tokenizer | None:
        if entry is None:
            self._warn_once(
                model,
                "tokenizer",
                f"tokenmeter: model {model!r} is not in the model catalog; its tokens are counted "
                "with a labelled estimate (source=estimate) and its cost is unpriced. "
                f"To fix, {_UNKNOWN_MODEL_FIX}.",
            )
            return None
        if entry.tokenizer is None:
            self._warn_once(
                model,
                "tokenizer",
                f"tokenmeter: catalog entry {entry.pattern!r} ({entry.origin}) for model {model!r} "
                "has no tokenizer; counting with a labelled estimate (source=estimate). "
                f"To fix, {LOCAL_DIRECTORY_FIX}.",
            )
            return None
        loaded = self._load_spec(entry.tokenizer, model)
        if isinstance(loaded, TokenizerUnavailable):
            self._warn_once(
                model,
                "tokenizer",
                f"tokenmeter: no tokenizer for model {model!r} "
                f"(catalog entry {entry.pattern!r}, {entry.origin}): {loaded.reason}. "
                f"Counting with a labelled estimate (source=estimate). To fix, {loaded.fix}.",
            )
            return None
        return loaded

    def _tokenizer_for(self, model: str) -> Tokenizer | None:
        if model in self._by_model:
            return self._by_model[model]
        tokenizer = self._resolve(model, self._catalog.lookup(model))
        if len(self._by_model) >= _MODEL_CACHE_SIZE:
            self._by_model.clear()
        self._by_model[model] = tokenizer
        return tokenizer

    def preload(self, models: Iterable[str]) -> None:
        """Load the tokenizers of ``models`` now (warning once for those that fall back)."""
        for model in models:
            self._tokenizer_for(model)

    # --- counting ------------------------------------------------------------------------

    def count_text(self, model: str, text: str) -> TokenCount:
        """Tokens of plain text, no special tokens added."""
        tokenizer = self._tokenizer_for(model)
        if tokenizer is None:
            return TokenCount(estimate_tokens(text), SOURCE_ESTIMATE, ESTIMATE_LABEL)
        return TokenCount(tokenizer.count_text(text), SOURCE_TOKENIZER, tokenizer.label)

    def count_prompt(self, model: str, prompt: str) -> TokenCount:
        """Tokens of a completions-API prompt as the server encodes it (BOS if the tokenizer adds one)."""
        tokenizer = self._tokenizer_for(model)
        if tokenizer is None:
            return TokenCount(estimate_tokens(prompt), SOURCE_ESTIMATE, ESTIMATE_LABEL)
        return TokenCount(tokenizer.count_prompt(prompt), SOURCE_TOKENIZER, tokenizer.label)

    def count_messages(self, model: str, messages: Sequence[Mapping[str, Any] | Any]) -> TokenCount:
        """Tokens of chat input as the server sees it, generation prompt included.

        Raises TypeError/ValueError for messages that are not chat messages.
        """
        chat = read_messages(messages)
        tokenizer = self._tokenizer_for(model)
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
            self._warn_once(
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
