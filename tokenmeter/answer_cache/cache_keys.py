"""The key of a chat request in the answer cache: a keyed hash of what shapes its answer.

Two requests share a key when they ask the same model the same normalised messages with the same
answer-shaping parameters. Text is normalised the way people retype a question: Unicode NFKC (full-width
and half-width forms agree), runs of whitespace collapsed to one space, ends stripped; roles and message
order are kept. Sampling parameters (temperature, top_p, seed, penalties), stream flags and who asked
(user, metadata) do not change what the question is, so they are not in the key. The knowledge base's
retrieved passages are in the messages (Chatchat puts them in the prompt): other passages, another key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

# Parameters that change the answer itself (its form, its length, the tools it may call): in the key.
ANSWER_SHAPING: Final = (
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
    "max_tokens", "max_completion_tokens", "stop", "logit_bias", "reasoning_effort", "verbosity",
    "modalities", "audio", "prediction", "web_search_options", "extra_body",
)  # fmt: skip
KEY_FORMAT: Final = 1  # in the hashed document: a new normalisation makes new keys, never wrong hits

_WHITESPACE: Final = re.compile(r"\s+")


def normalised_text(text: str) -> str:
    """NFKC, whitespace runs as one space, stripped."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def cacheable(kwargs: Mapping[str, Any]) -> bool:
    """Whether a chat request can be answered from the cache: one choice, no log-probabilities asked for."""
    n = _given(kwargs.get("n"))
    if n is not None and n != 1:
        return False
    return not (_given(kwargs.get("logprobs")) or _given(kwargs.get("top_logprobs")))


def key_document(model: str, messages: list[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the key is a hash of: the model as asked, the normalised messages, the answer-shaping parameters."""
    params = {name: _plain(value) for name in ANSWER_SHAPING if (value := _given(kwargs.get(name))) is not None}
    return {
        "format": KEY_FORMAT,
        "model": model,
        "messages": [_normalised_message(_plain(message)) for message in messages],
        "params": params,
    }


class CacheKeys:
    """HMAC-SHA256 of a request's key document under a key of the cache's own (derived from the hash key)."""

    def __init__(self, digest_key: bytes) -> None:
        self._digest_key = digest_key

    def key_for(self, model: str, messages: list[Any], kwargs: Mapping[str, Any]) -> str:
        """The hex digest naming the request's entry; raises TypeError/ValueError on content JSON cannot hold."""
        document = json.dumps(
            key_document(model, messages, kwargs), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hmac.new(self._digest_key, document.encode("utf-8"), hashlib.sha256).hexdigest()


def _normalised_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    normalised = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        normalised["content"] = normalised_text(content)
    elif isinstance(content, list):  # content parts: the text parts normalised, images and the rest as given
        normalised["content"] = [_normalised_part(part) for part in content]
    return normalised


def _normalised_part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return {**part, "text": normalised_text(part["text"])}
    return part


def _given(value: Any) -> Any:
    """None for an argument not given: absent, None, or the SDK's NOT_GIVEN / omit sentinels."""
    if value is None or type(value).__name__ in {"NotGiven", "Omit"}:
        return None
    return value


def _plain(value: Any) -> Any:
    """SDK objects and TypedDicts as JSON-like data, absent fields left out (as a dict would leave them)."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(exclude_none=True))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if _given(v) is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
