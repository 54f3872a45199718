"""The model catalog: which tokenizer, chat format and price a model name gets.

Entries are tried in order and the first match wins: the user's file
(TOKENMETER_MODELS) first, then the built-in ``models.yaml``. Matching is
case-insensitive, and a name such as ``Qwen/Qwen2.5-7B-Instruct`` or
``/models/Qwen2.5-7B-Instruct`` is also tried without its ``org/`` or directory
prefix. There is no catch-all entry: an unknown model gets ``None`` and is unpriced.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Final

from tokenmeter.catalog.catalog_file import REGEX_PREFIX, parse_catalog, read_catalog_file
from tokenmeter.catalog.entry import ModelEntry
from tokenmeter.pricing import Price

BUILTIN_CATALOG_NAME: Final = "models.yaml"
_LOOKUP_CACHE_SIZE: Final = 4096


def _matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith(REGEX_PREFIX):
        compiled = re.compile(pattern[len(REGEX_PREFIX) :], re.IGNORECASE)
        return lambda name: compiled.search(name) is not None
    glob = re.compile(fnmatch.translate(pattern.lower()))
    return lambda name: glob.match(name) is not None


def candidate_names(model: str) -> tuple[str, ...]:
    """``model`` lower-cased, then without an ``org/`` or directory prefix if it has one."""
    name = model.strip().lower()
    short = name.rstrip("/").rsplit("/", 1)[-1]
    return (name, short) if short and short != name else (name,)


def load_builtin_entries() -> list[ModelEntry]:
    text = resources.files("tokenmeter.catalog").joinpath(BUILTIN_CATALOG_NAME).read_text(encoding="utf-8")
    return parse_catalog(text, f"{BUILTIN_CATALOG_NAME} (built-in)", None)


class ModelCatalog:
    """An ordered list of entries; immutable once built."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._entries: tuple[ModelEntry, ...] = tuple(entries)
        self._matchers = tuple((_matcher(entry.pattern), entry) for entry in self._entries)
        self._cache: dict[str, ModelEntry | None] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def load(cls, user_path: Path | None = None) -> ModelCatalog:
        """The built-in catalog, with the entries of ``user_path`` (if given) in front of it.

        Raises ``CatalogError`` if either file cannot be read or is invalid.
        """
        user_entries = read_catalog_file(Path(user_path)) if user_path is not None else []
        return cls([*user_entries, *load_builtin_entries()])

    @property
    def entries(self) -> tuple[ModelEntry, ...]:
        return self._entries

    def lookup(self, model: str) -> ModelEntry | None:
        """The first entry matching ``model`` (see module doc), or None."""
        with self._cache_lock:
            if model in self._cache:
                return self._cache[model]
        names = candidate_names(model)
        found = next((entry for matches, entry in self._matchers if any(matches(n) for n in names)), None)
        with self._cache_lock:
            if len(self._cache) >= _LOOKUP_CACHE_SIZE:
                self._cache.clear()
            self._cache[model] = found
        return found

    def price_for(self, model: str) -> Price | None:
        """The price of ``model`` valid now; None when it is unknown or its entry has no price."""
        entry = self.lookup(model)
        return entry.price if entry is not None else None

    def price_at(self, model: str, when: datetime) -> Price | None:
        """The price of ``model`` valid at ``when`` (timezone-aware): what a call made then is billed at."""
        entry = self.lookup(model)
        return entry.price_at(when) if entry is not None else None
