"""The answer cache from the settings: TOKENMETER_ANSWER_CACHE, _TTL, _MAX_ENTRIES (docs/answer-cache.md).

Off unless TOKENMETER_ANSWER_CACHE names where answers live. It also needs TOKENMETER_HASH_KEY (the
answers are sealed under a key derived from it) and the `answer-cache` extra (`cryptography`): without
either, one warning names what is missing and the cache stays off. Calls are never affected.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from tokenmeter.answer_cache.sealed_cache import AnswerCache
from tokenmeter.answer_cache.stores import DirectoryStore, EntryStore, MemoryStore
from tokenmeter.log_once import LogOnce
from tokenmeter.settings import Settings, hash_key_bytes

MEMORY = "memory"
DIRECTORY_PREFIX = "dir:"

_warnings = LogOnce(logging.getLogger("tokenmeter"))


def cache_location(value: str) -> str | Path | None:
    """Where answers live: "memory", a directory (``dir:/path`` or an absolute path); None when neither."""
    value = value.strip()
    if value == MEMORY:
        return MEMORY
    path = Path(value.removeprefix(DIRECTORY_PREFIX)).expanduser()
    return path if path.is_absolute() else None


def open_answer_cache(settings: Settings, warnings: LogOnce = _warnings) -> AnswerCache | None:
    """The cache the settings ask for; None (with one warning naming why, when it was asked for) otherwise."""
    if not settings.answer_cache:
        return None
    location = cache_location(settings.answer_cache)
    problem = _missing(settings, location)
    if problem is not None:
        warnings.warning(("answer-cache", problem), "tokenmeter: TOKENMETER_ANSWER_CACHE is set but %s; "
                         "the answer cache stays off (calls go to the model as usual).", problem)  # fmt: skip
        return None
    hash_key = hash_key_bytes(settings)
    assert hash_key is not None and location is not None  # _missing checked both
    return AnswerCache.under_hash_key(hash_key, _store(settings, location), settings.answer_cache_ttl)


def _missing(settings: Settings, location: str | Path | None) -> str | None:
    if location is None:
        return f"{settings.answer_cache!r} is neither 'memory' nor an absolute directory path ('dir:/path')"
    if hash_key_bytes(settings) is None:
        return "TOKENMETER_HASH_KEY is not (answers are encrypted under a key derived from it)"
    if importlib.util.find_spec("cryptography") is None:
        return "the `cryptography` package is not installed (pip install 'tokenmeter-otel[answer-cache]')"
    return None


def _store(settings: Settings, location: str | Path) -> EntryStore:
    ttl, max_entries = settings.answer_cache_ttl, settings.answer_cache_max_entries
    if isinstance(location, Path):
        return DirectoryStore(location, ttl, max_entries)
    return MemoryStore(ttl, max_entries)
