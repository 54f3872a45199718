"""Hugging Face tokenizers: local model directories, ``tokenizer.json`` files, hub ids.

``transformers`` is imported only here and only when such a tokenizer is loaded, so
``import tokenmeter.tokenizers`` stays light. Nothing is downloaded: hub ids are read
from the local Hugging Face cache (``local_files_only=True``) unless the registry was
built with ``allow_download=True`` (TOKENMETER_ALLOW_DOWNLOAD).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from tokenmeter.catalog.entry import TokenizerSpec
from tokenmeter.catalog.file_refs import first_existing, is_package_ref
from tokenmeter.tokenizers.backend import LOCAL_DIRECTORY_FIX, TokenizerUnavailable

_NO_LENGTH_LIMIT: Final = 10**30  # silences "sequence length is longer than the maximum" warnings
_SPECIAL_TOKEN_KEYS: Final = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_ids_length(result: Any) -> int:
    """Length of what ``apply_chat_template(tokenize=True)`` returned (a list, or a BatchEncoding in v5)."""
    ids = result["input_ids"] if isinstance(result, Mapping) or hasattr(result, "keys") else result
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if len(ids) > 0 and isinstance(ids[0], list):  # a batch of one conversation
        ids = ids[0]
    return len(ids)


class HuggingFaceTokenizer:
    """A ``transformers`` tokenizer. Calls are serialised: fast tokenizers are not safe to share mid-call."""

    def __init__(self, tokenizer: Any, label: str) -> None:
        self._tokenizer = tokenizer
        self._label = label
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self._label

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    def count_text(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_prompt(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer.encode(text, add_special_tokens=True))

    def count_rendered(self, text: str) -> int:
        # Added tokens (<|im_start|> etc.) are matched in text by Hugging Face tokenizers.
        return self.count_text(text)

    def count_chat_template(self, messages: Sequence[dict[str, Any]]) -> int | None:
        if not self.has_chat_template:
            return None
        with self._lock:
            result = self._tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
        return _token_ids_length(result)


def _read_tokenizer_config(directory: Path) -> dict[str, Any]:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerUnavailable(f"cannot read {path}: {exc}", fix=f"repair or remove {path}") from None
    return config if isinstance(config, dict) else {}


def _chat_template_of(directory: Path, config: Mapping[str, Any]) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _from_tokenizer_file(path: Path) -> Any:
    """A bare tokenizer.json, with bos/eos tokens and chat template from a sibling tokenizer_config.json."""
    from transformers import PreTrainedTokenizerFast  # heavy: loaded only when needed

    config = _read_tokenizer_config(path.parent)
    kwargs: dict[str, str] = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            kwargs[key] = value
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), **kwargs)
    template = _chat_template_of(path.parent, config)
    if template:
        tokenizer.chat_template = template
    return tokenizer


def load_huggingface(spec: TokenizerSpec, allow_download: bool) -> HuggingFaceTokenizer:
    """The counting tokenizer ``spec`` names; raises TokenizerUnavailable with the fix."""
    if not spec.path and not spec.hub_id:
        raise TokenizerUnavailable("its catalog entry names no tokenizer.path (no tokenizer data ships on PyPI)")
    try:
        from transformers import AutoTokenizer  # heavy: loaded only when needed
    except ImportError:
        raise TokenizerUnavailable(
            "transformers is not installed", fix="pip install 'tokenmeter-otel[hf]' in this environment"
        ) from None
    try:
        source, tokenizer = _read_tokenizer(spec, allow_download, AutoTokenizer)
    except TokenizerUnavailable:
        raise
    except Exception as exc:  # third-party loading code can raise anything; remember it as unavailable
        raise _not_loadable(spec, allow_download, exc) from None
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    tokenizer.model_max_length = _NO_LENGTH_LIMIT
    return HuggingFaceTokenizer(tokenizer, f"hf:{source}")


def _read_tokenizer(spec: TokenizerSpec, allow_download: bool, auto_tokenizer: Any) -> tuple[str, Any]:
    """Where the tokenizer comes from (for its label) and the ``transformers`` tokenizer read from there.

    The first of ``spec.path`` that exists (a model directory or a tokenizer.json file), else
    the hub id from the local cache (downloaded only with ``allow_download``).
    """
    if not spec.path:
        source = str(spec.hub_id)
        tokenizer = auto_tokenizer.from_pretrained(
            source, local_files_only=not allow_download, trust_remote_code=spec.trust_remote_code
        )
        return source, tokenizer
    found = first_existing(spec.path)
    if found is None:
        raise TokenizerUnavailable(
            f"none of the tokenizer paths exist: {', '.join(spec.path)}",
            fix="make tokenizer.path name an existing model directory (the one with "
            "tokenizer_config.json) or tokenizer.json file on this machine",
        )
    ref, path = found
    source = ref if is_package_ref(ref) else str(path)
    if path.is_file():
        return source, _from_tokenizer_file(path)
    return source, auto_tokenizer.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=spec.trust_remote_code
    )


def _not_loadable(spec: TokenizerSpec, allow_download: bool, exc: Exception) -> TokenizerUnavailable:
    """What ``transformers`` failing to load the tokenizer means, and what to do about it."""
    where = ", ".join(spec.path) if spec.path else spec.hub_id
    fix = LOCAL_DIRECTORY_FIX
    if "trust_remote_code" in str(exc):
        fix = "set tokenizer.trust_remote_code: true for this entry if you trust the model directory's code"
    elif not spec.path and not allow_download:
        fix = (
            "download the tokenizer into the Hugging Face cache beforehand, "
            "set TOKENMETER_ALLOW_DOWNLOAD=true, "
            "or " + LOCAL_DIRECTORY_FIX
        )
    return TokenizerUnavailable(
        f"transformers could not load a tokenizer from {where}: {type(exc).__name__}: {exc}", fix=fix
    )
