"""The answer cache: entries named by `cache_keys`, sealed by `sealing`, kept by a store of `stores`.

`sealing` (and with it `cryptography`) is imported only when a cache is made, so the SDK wrappers can
name this class whether or not the `answer-cache` extra is installed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokenmeter.answer_cache.cache_keys import CacheKeys
from tokenmeter.answer_cache.entries import CachedAnswer
from tokenmeter.answer_cache.stores import Clock, EntryStore

if TYPE_CHECKING:
    from tokenmeter.answer_cache.sealing import Sealer


class AnswerCache:
    def __init__(
        self, keys: CacheKeys, sealer: Sealer, store: EntryStore, ttl: float, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.ttl = ttl
        self._keys = keys
        self._sealer = sealer
        self._clock = clock

    @classmethod
    def under_hash_key(cls, hash_key: bytes, store: EntryStore, ttl: float, clock: Clock = time.time) -> AnswerCache:
        """A cache whose names and seals are derived from ``hash_key`` (TOKENMETER_HASH_KEY)."""
        from tokenmeter.answer_cache.sealing import Sealer, derive_secrets

        secrets = derive_secrets(hash_key)
        return cls(CacheKeys(secrets.naming_key), Sealer(secrets.sealing_key), store, ttl, clock)

    def key_for(self, model: str, messages: list[Any], kwargs: Mapping[str, Any]) -> str:
        return self._keys.key_for(model, messages, kwargs)

    def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key`` within the TTL; None for a miss (absent, expired, not readable)."""
        sealed = self.store.get(key)
        if sealed is None:
            return None
        plaintext = self._sealer.open(sealed, key)
        answer = CachedAnswer.from_bytes(plaintext) if plaintext is not None else None
        if answer is None:
            return None  # another key's, changed, or not an entry: left alone (it may be another process's)
        if self._clock() - answer.stored_at >= self.ttl:
            self.store.remove(key)
            return None
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        self.store.put(key, self._sealer.seal(answer.to_bytes(), key))

    def now(self) -> float:
        return self._clock()

    def clear(self) -> None:
        self.store.clear()
