"""The keyed hash of a text (a prompt, a completion, a rater's reason), so repeats can be found without the text.

With a key (TOKENMETER_HASH_KEY): HMAC-SHA256, hex; without the key a digest cannot be checked against
guessed texts. Without one: plain SHA-256, hex (short texts can then be guessed; callers warn once). The app
side's prompt hashes and serve's ``POST /v1/feedback`` reasons are the same function, so equal texts hash
equal on both sides.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

ALGORITHM_HMAC: Final = "hmac-sha256"
ALGORITHM_PLAIN: Final = "sha256"


def text_digest(text: str, key: bytes | None) -> str:
    """The hex digest of ``text`` (UTF-8): HMAC-SHA256 under ``key``, plain SHA-256 without one."""
    data = text.encode("utf-8")
    if key:
        return hmac.digest(key, data, "sha256").hex()  # one-shot C path, same digest as hmac.new
    return hashlib.sha256(data).hexdigest()


def digest_algorithm(key: bytes | None) -> str:
    return ALGORITHM_HMAC if key else ALGORITHM_PLAIN
