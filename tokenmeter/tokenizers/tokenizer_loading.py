"""Loading tokenizers: each tokenizer spec loaded once, even under concurrent first use, and kept.

A spec that cannot be loaded is remembered as unavailable (its ``TokenizerUnavailable``), so
it is not retried on every call. Tokenizers are never evicted: a catalog names few of them.
"""

from __future__ import annotations

import logging
import threading
import time

from tokenmeter.catalog import TokenizerSpec
from tokenmeter.tokenizers.backend import Tokenizer, TokenizerUnavailable
from tokenmeter.tokenizers.tiktoken_encodings import load_tiktoken_encoding
from tokenmeter.tokenizers.tiktoken_files import load_tiktoken_file

logger = logging.getLogger("tokenmeter.tokenizers")


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


class TokenizerLoader:
    """The tokenizers loaded so far, by spec. Thread-safe."""

    def __init__(self, allow_download: bool = False) -> None:
        self._allow_download = allow_download
        self._lock = threading.Lock()
        self._spec_locks: dict[TokenizerSpec, threading.Lock] = {}
        self._loaded: dict[TokenizerSpec, Tokenizer | TokenizerUnavailable] = {}

    def load(self, spec: TokenizerSpec, model: str) -> Tokenizer | TokenizerUnavailable:
        """The tokenizer of ``spec`` (loaded now if need be, for ``model``), or why it cannot be loaded."""
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
