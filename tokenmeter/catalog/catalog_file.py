"""Reading a catalog YAML file into ``ModelEntry`` values, strictly.

Every problem raises ``CatalogError`` with a message that names the file, the entry
(1-based index and its ``match``), the field and what would fix it, e.g.::

    models.yaml entry 3 (match 'glm-4*'): price.per must be "1K" or "1M", got "10K"
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, NoReturn, cast

import regex
import yaml

from tokenmeter.catalog.entry import (
    BUILTIN_ORIGIN,
    CHAT_FORMATS,
    TOKENIZER_KINDS,
    ModelEntry,
    TokenizerKind,
    TokenizerSpec,
)
from tokenmeter.catalog.file_refs import is_package_ref, split_package_ref
from tokenmeter.pricing import PER_1K, PER_1M, Price

REGEX_PREFIX: Final = "re:"
ENTRY_FIELDS: Final = ("match", "provider", "tokenizer", "chat_format", "price", "note")
PRICE_FIELDS: Final = ("input", "output", "per", "currency", "virtual")
TOKENIZER_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "tiktoken": ("kind", "encoding"),
    "tiktoken_file": ("kind", "path", "pat_str", "special_tokens", "normalize"),
    "huggingface": ("kind", "path", "hub_id", "trust_remote_code", "chat_template"),
}
_PER_VALUES: Final[dict[str, int]] = {"1K": PER_1K, "1M": PER_1M}
_CURRENCY = re.compile(r"^[A-Z]{3,8}$")
_NORMALIZATIONS: Final = ("NFC", "NFKC")


class CatalogError(ValueError):
    """A model catalog file that cannot be used; the message names file, entry, field and fix."""


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


_KIND_NAMES: Final[tuple[tuple[type | tuple[type, ...], str], ...]] = (
    (type(None), "null"),
    (bool, "true/false"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a mapping"),
)


def _kind_of(value: object) -> str:
    return next((name for kinds, name in _KIND_NAMES if isinstance(value, kinds)), type(value).__name__)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (a silent override otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) or key is None:
                if key in seen:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {_show(key)} is given twice in one mapping",
                        mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _EntryReader:
    """Validates one entry; ``fail`` raises with the file/entry prefix."""

    def __init__(self, source: str, index: int, raw: object, base_dir: Path | None) -> None:
        self.source = source
        self.index = index
        self.raw = raw
        self.base_dir = base_dir
        self.pattern: str | None = None

    def fail(self, message: str) -> NoReturn:
        where = f"{self.source} entry {self.index}"
        if self.pattern is not None:
            where += f" (match {self.pattern!r})"
        raise CatalogError(f"{where}: {message}")

    def check_keys(self, mapping: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did_you_mean = f' (did you mean "{hint[0]}"?)' if hint else ""
                where = f"{prefix}{key}" if prefix else str(key)
                self.fail(f"unknown field {where!r}{did_you_mean}; allowed: {', '.join(allowed)}")

    def optional_str(self, mapping: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
        value = mapping.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{prefix}{key} must be a non-empty string, got {_kind_of(value)} {_show(value)}")
        return value

    def read(self) -> ModelEntry:
        raw = self.raw
        if not isinstance(raw, dict):
            self.fail(f'must be a mapping with at least a "match" key, got {_kind_of(raw)}')
        match = raw.get("match")
        if not isinstance(match, str) or not match.strip():
            self.fail(
                'match is required: a glob such as "qwen2.5-*" or a regular expression '
                'such as "re:^qwen.*$", '
                f"got {_kind_of(match)} {_show(match)}"
            )
        self.pattern = match.strip()
        self.check_keys(raw, ENTRY_FIELDS, "")
        if self.pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(self.pattern[len(REGEX_PREFIX) :], re.IGNORECASE)
            except re.error as exc:
                self.fail(f"match is not a valid regular expression after 're:': {exc}")
        tokenizer = self.read_tokenizer(raw.get("tokenizer"))
        chat_format = self.optional_str(raw, "chat_format")
        if chat_format is not None and chat_format not in CHAT_FORMATS:
            self.fail(f"chat_format must be one of {', '.join(CHAT_FORMATS)}, got {_show(chat_format)}")
        if chat_format == "template" and (tokenizer is None or tokenizer.kind != "huggingface"):
            self.fail('chat_format "template" needs a tokenizer of kind huggingface (it uses its chat template)')
        return ModelEntry(
            pattern=self.pattern,
            provider=self.optional_str(raw, "provider"),
            tokenizer=tokenizer,
            chat_format=chat_format,
            price=self.read_price(raw.get("price")),
            note=self.optional_str(raw, "note"),
            origin=BUILTIN_ORIGIN if self.base_dir is None else self.source,
        )

    # --- price -------------------------------------------------------------------------

    def read_decimal(self, price: Mapping[str, Any], key: str) -> Decimal:
        value = price.get(key)
        problem = f'price.{key} must be a non-negative number such as "0.5" or 0.5, got {_kind_of(value)}'
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(problem)
        try:
            # str() first: 0.1 in YAML is a float, and Decimal(0.1) would carry its binary error.
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{problem} {_show(value)}")
        if not amount.is_finite() or amount < 0:
            self.fail(f"{problem} {_show(value)}")
        return amount

    def read_price(self, price: object) -> Price | None:
        if price is None:
            return None
        if not isinstance(price, dict):
            self.fail(f"price must be a mapping with input, output, per and currency, got {_kind_of(price)}")
        self.check_keys(price, PRICE_FIELDS, "price.")
        input_price = self.read_decimal(price, "input")
        output_price = self.read_decimal(price, "output")
        per_raw = price.get("per")
        per = _PER_VALUES.get(per_raw.strip().upper()) if isinstance(per_raw, str) else None
        if per is None and isinstance(per_raw, int) and not isinstance(per_raw, bool):
            per = per_raw if per_raw in (PER_1K, PER_1M) else None
        if per is None:
            self.fail(f'price.per must be "1K" or "1M", got {_show(per_raw)}')
        currency = price.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.match(currency.strip().upper()):
            self.fail(f'price.currency must be a currency code such as "USD" or "CNY", got {_show(currency)}')
        virtual = price.get("virtual", False)
        if not isinstance(virtual, bool):
            self.fail(f"price.virtual must be true or false, got {_show(virtual)}")
        return Price(
            input=input_price,
            output=output_price,
            per=per,
            currency=currency.strip().upper(),
            virtual=virtual,
        )

    # --- tokenizer ---------------------------------------------------------------------

    def read_paths(self, tokenizer: Mapping[str, Any]) -> tuple[str, ...]:
        value = tokenizer.get("path")
        if value is None:
            return ()
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) and item.strip() for item in items):
            self.fail(
                "tokenizer.path must be a path or a list of candidate paths (first existing wins), "
                f"got {_kind_of(value)} {_show(value)}"
            )
        paths: list[str] = []
        for item in cast(list[str], items):
            ref = item.strip()
            if is_package_ref(ref):
                try:
                    split_package_ref(ref)
                except ValueError as exc:
                    self.fail(f"tokenizer.path: {exc}")
                paths.append(ref)
                continue
            path = Path(ref).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path  # relative to the catalog file
            paths.append(str(path))
        return tuple(paths)

    def read_special_tokens(self, value: object) -> tuple[tuple[str, int], ...]:
        if value is None:
            return ()
        usage = (
            "tokenizer.special_tokens must be {start: <first id>, tokens: [...]} "
            'or a mapping of token to id such as {"<|endoftext|>": 100257}'
        )
        if not isinstance(value, dict):
            self.fail(f"{usage}, got {_kind_of(value)}")
        pairs: list[tuple[str, int]] = []
        if set(value) <= {"start", "tokens"} and "tokens" in value:
            start = value.get("start")
            tokens = value.get("tokens")
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                self.fail(f"tokenizer.special_tokens.start must be a non-negative integer id, got {_show(start)}")
            if not isinstance(tokens, list):
                self.fail(f"tokenizer.special_tokens.tokens must be a list, got {_kind_of(tokens)}")
            names: list[str] = []
            for item in tokens:
                names.extend(self.expand_special(item))
            pairs = [(name, start + offset) for offset, name in enumerate(names)]
        else:
            for token, token_id in value.items():
                if not isinstance(token, str) or not isinstance(token_id, int) or isinstance(token_id, bool):
                    self.fail(f"{usage}; bad pair {_show(token)}: {_show(token_id)}")
                pairs.append((token, token_id))
        seen_tokens = {token for token, _ in pairs}
        seen_ids = {token_id for _, token_id in pairs}
        if len(seen_tokens) != len(pairs) or len(seen_ids) != len(pairs):
            self.fail("tokenizer.special_tokens lists a token or an id twice")
        return tuple(pairs)

    def expand_special(self, item: object) -> list[str]:
        if isinstance(item, str) and item:
            return [item]
        if isinstance(item, dict) and set(item) == {"format", "count"}:
            fmt, count = item["format"], item["count"]
            if isinstance(fmt, str) and "{i}" in fmt and isinstance(count, int) and count > 0:
                return [fmt.replace("{i}", str(i)) for i in range(count)]
        self.fail(
            "tokenizer.special_tokens.tokens items must be strings or "
            f'{{format: "<|extra_{{i}}|>", count: 205}}, got {_show(item)}'
        )

    def read_tokenizer(self, tokenizer: object) -> TokenizerSpec | None:
        if tokenizer is None:
            return None
        if not isinstance(tokenizer, dict):
            self.fail(f'tokenizer must be a mapping with a "kind" key, got {_kind_of(tokenizer)}')
        kind = tokenizer.get("kind")
        if kind not in TOKENIZER_KINDS:
            self.fail(f"tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}, got {_show(kind)}")
        kind = cast(TokenizerKind, kind)
        self.check_keys(tokenizer, TOKENIZER_FIELDS[kind], "tokenizer.")
        if kind == "tiktoken":
            encoding = self.optional_str(tokenizer, "encoding", "tokenizer.")
            if encoding is None:
                self.fail('tokenizer.encoding is required for kind tiktoken, e.g. "cl100k_base"')
            return TokenizerSpec(kind=kind, encoding=encoding.strip())
        paths = self.read_paths(tokenizer)
        if kind == "tiktoken_file":
            if not paths:
                self.fail(
                    "tokenizer.path is required for kind tiktoken_file: a .tiktoken file or "
                    '"package:<package>/<relative path>"'
                )
            pat_str = tokenizer.get("pat_str")
            if not isinstance(pat_str, str) or not pat_str:
                self.fail("tokenizer.pat_str is required for kind tiktoken_file: the tokenizer's split regex")
            try:
                # tiktoken compiles pat_str with Rust fancy-regex; the `regex` module (a tiktoken
                # dependency) understands the same \p{...} classes and catches syntax errors early.
                regex.compile(pat_str)
            except regex.error as exc:
                self.fail(f"tokenizer.pat_str is not a valid regular expression: {exc}")
            normalize = tokenizer.get("normalize")
            if normalize is not None and normalize not in _NORMALIZATIONS:
                self.fail(f"tokenizer.normalize must be NFC or NFKC or absent, got {_show(normalize)}")
            return TokenizerSpec(
                kind=kind,
                path=paths,
                pat_str=pat_str,
                special_tokens=self.read_special_tokens(tokenizer.get("special_tokens")),
                normalize=normalize,
            )
        trust = tokenizer.get("trust_remote_code", False)
        if not isinstance(trust, bool):
            self.fail(f"tokenizer.trust_remote_code must be true or false, got {_show(trust)}")
        return TokenizerSpec(
            kind=kind,
            path=paths,
            hub_id=self.optional_str(tokenizer, "hub_id", "tokenizer."),
            trust_remote_code=trust,
            chat_template=self.optional_str(tokenizer, "chat_template", "tokenizer."),
        )


def parse_catalog(text: str, source: str, base_dir: Path | None) -> list[ModelEntry]:
    """Entries of a catalog document. ``base_dir`` (None for the built-in catalog) anchors relative paths."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CatalogError(f"{source}: not valid YAML{where}: {problem}") from None
    if document is None:
        return []
    if not isinstance(document, list):
        raise CatalogError(
            f"{source}: the top level must be a list of model entries (lines starting with '- match: ...'), "
            f"got {_kind_of(document)}"
        )
    return [_EntryReader(source, index, raw, base_dir).read() for index, raw in enumerate(document, start=1)]


def read_catalog_file(path: Path) -> list[ModelEntry]:
    """Entries of the user catalog at ``path``; relative tokenizer paths are relative to it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CatalogError(
            f"{path}: cannot read the model catalog ({reason}); check TOKENMETER_MODELS or --models"
        ) from None
    return parse_catalog(text, str(path), path.resolve().parent)
