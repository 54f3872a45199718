"""Answers sealed at rest: AES-256-GCM under a key derived from TOKENMETER_HASH_KEY (needs `cryptography`,
the `answer-cache` extra).

Two keys are derived with HKDF-SHA256 from the hash key, each under its own fixed label: one names entries
(`cache_keys.CacheKeys`), one seals them, so a file name never helps to read a file. Each entry gets a fresh
random 12-byte nonce. The entry's key digest is the associated data: an entry copied under another name (or
another process's key) fails to open, and so does any changed byte. A sealed entry is
``MAGIC || nonce || ciphertext-and-tag``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC: Final = b"tmac1"  # tokenmeter answer cache, format 1
NONCE_BYTES: Final = 12
SEALING_LABEL: Final = b"tokenmeter answer-cache v1: sealing key"
NAMING_LABEL: Final = b"tokenmeter answer-cache v1: entry names"


@dataclass(frozen=True, repr=False)
class CacheSecrets:
    """The two keys of the cache, derived from the hash key (repr hides them)."""

    naming_key: bytes
    sealing_key: bytes


def derive_secrets(hash_key: bytes) -> CacheSecrets:
    return CacheSecrets(naming_key=_hkdf(hash_key, NAMING_LABEL), sealing_key=_hkdf(hash_key, SEALING_LABEL))


def _hkdf(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


class Sealer:
    def __init__(self, sealing_key: bytes) -> None:
        self._aead = AESGCM(sealing_key)

    def seal(self, plaintext: bytes, key_digest: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, _associated(key_digest))

    def open(self, sealed: bytes, key_digest: str) -> bytes | None:
        """The plaintext; None for anything that is not an intact entry sealed under this key for this digest."""
        header = len(MAGIC) + NONCE_BYTES
        if len(sealed) <= header or not sealed.startswith(MAGIC):
            return None
        try:
            return self._aead.decrypt(sealed[len(MAGIC) : header], sealed[header:], _associated(key_digest))
        except InvalidTag:
            return None


def _associated(key_digest: str) -> bytes:
    return MAGIC + key_digest.encode("ascii")
