"""Keyed hashes of prompts and completions, so repeats can be found without the text.

With TOKENMETER_HASH_KEY set, HMAC-SHA256 under that key: without the key a
hash cannot be checked against guessed prompts. Without a key, plain SHA-256,
and one warning that short prompts can be guessed from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from tokenmeter.instrumentation.safety import warn_once
from tokenmeter.text_digest import digest_algorithm, text_digest


class ContentHasher:
    def __init__(self, key: bytes | None) -> None:
        self._key = key or None

    @property
    def algorithm(self) -> str:
        return digest_algorithm(self._key)

    def hash_text(self, text: str) -> str:
        if self._key:
            return text_digest(text, self._key)
        warn_once(
            "content-hash-unkeyed",
            "TOKENMETER_HASH_KEY is not set: prompts and completions are hashed with plain "
            "SHA-256, and short prompts can be recovered by guessing. Set TOKENMETER_HASH_KEY "
            "to a secret to use HMAC-SHA256.",
        )
        return text_digest(text, None)

    def hash_messages(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return self.hash_text(canonical_json(messages))


def canonical_json(value: Any) -> str:
    """One spelling per value (sorted keys, no spaces), so equal prompts hash equal."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
