"""Which tokenizer counts a model's tokens: its catalog entry's, or none (a labelled estimate).

A model name is looked up in the catalog once and remembered (up to a bound). A model that
falls back to the estimate logs exactly one warning naming the model, the reason and how to
configure it: not in the catalog, an entry without a tokenizer, or a tokenizer that cannot
be loaded.
"""

from __future__ import annotations

from typing import Final

from tokenmeter.catalog import ModelCatalog, ModelEntry
from tokenmeter.log_once import LogOnce
from tokenmeter.tokenizers.backend import LOCAL_DIRECTORY_FIX, Tokenizer, TokenizerUnavailable
from tokenmeter.tokenizers.tokenizer_loading import TokenizerLoader

_MODEL_CACHE_SIZE: Final = 4096  # model names remembered; tokenizers themselves are never evicted

_UNKNOWN_MODEL_FIX: Final = (
    "add an entry matching this model to your TOKENMETER_MODELS catalog file, with a tokenizer "
    "(tokenizer.path = the model's local directory, the one with tokenizer_config.json) and a price; "
    "see docs/catalog.md"
)


def warn_once(warnings: LogOnce, model: str, topic: str, message: str) -> None:
    """One warning per model (case and spacing aside) and topic."""
    warnings.warning((model.strip().lower(), topic), message)


class ModelTokenizers:
    """Model name -> its tokenizer, or None for the estimate. Thread-safe."""

    def __init__(self, catalog: ModelCatalog, loader: TokenizerLoader, warnings: LogOnce) -> None:
        self._catalog = catalog
        self._loader = loader
        self._warnings = warnings
        self._by_model: dict[str, Tokenizer | None] = {}

    def tokenizer_for(self, model: str) -> Tokenizer | None:
        if model in self._by_model:
            return self._by_model[model]
        tokenizer = self._resolve(model, self._catalog.lookup(model))
        if len(self._by_model) >= _MODEL_CACHE_SIZE:
            self._by_model.clear()
        self._by_model[model] = tokenizer
        return tokenizer

    def _resolve(self, model: str, entry: ModelEntry | None) -> Tokenizer | None:
        if entry is None:
            self._fall_back(
                model,
                f"tokenmeter: model {model!r} is not in the model catalog; its tokens are counted "
                "with a labelled estimate (source=estimate) and its cost is unpriced. "
                f"To fix, {_UNKNOWN_MODEL_FIX}.",
            )
            return None
        if entry.tokenizer is None:
            self._fall_back(
                model,
                f"tokenmeter: catalog entry {entry.pattern!r} ({entry.origin}) for model {model!r} "
                "has no tokenizer; counting with a labelled estimate (source=estimate). "
                f"To fix, {LOCAL_DIRECTORY_FIX}.",
            )
            return None
        loaded = self._loader.load(entry.tokenizer, model)
        if isinstance(loaded, TokenizerUnavailable):
            self._fall_back(
                model,
                f"tokenmeter: no tokenizer for model {model!r} "
                f"(catalog entry {entry.pattern!r}, {entry.origin}): {loaded.reason}. "
                f"Counting with a labelled estimate (source=estimate). To fix, {loaded.fix}.",
            )
            return None
        return loaded

    def _fall_back(self, model: str, message: str) -> None:
        warn_once(self._warnings, model, "tokenizer", message)
