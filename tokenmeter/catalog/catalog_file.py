"""Reading a catalog YAML file into ``ModelEntry`` values, strictly (pydantic models).

Every problem raises ``CatalogError`` with a message that names the file, the entry
(1-based index and its ``match``), the field and what would fix it, e.g.::

    models.yaml entry 3 (match 'glm-4*'): price.per must be "1K" or "1M", got "10K"
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import regex
import yaml
from pydantic import Field, ValidationError, ValidationInfo
from pydantic.functional_validators import AfterValidator, BeforeValidator, PlainValidator, model_validator
from pydantic.types import Discriminator, StringConstraints, Tag
from pydantic_core import ErrorDetails

from tokenmeter.catalog.entry import BUILTIN_ORIGIN, CHAT_FORMATS, TOKENIZER_KINDS, ModelEntry, TokenizerSpec
from tokenmeter.catalog.file_refs import is_package_ref, split_package_ref
from tokenmeter.catalog.price_file import PRICE_EXPECTED, PRICE_TAGS, PriceField, read_schedule
from tokenmeter.catalog.strict_model import Name, Strict, Text, problem
from tokenmeter.errors import ConfigurationError

REGEX_PREFIX: Final = "re:"

# What each field must be, by path. Any pydantic error on or inside a field is reported as
# "<path> <text>", with {kind} the YAML kind of the wrong value, {value} the value, {got} both.
_NON_EMPTY = "must be a non-empty string, got {got}"
_EXPECTED: Final[dict[str, str]] = {
    "": 'must be a mapping with at least a "match" key, got {kind}',
    "match": 'is required: a glob such as "qwen2.5-*" or a regular expression such as "re:^qwen.*$", got {got}',
    "provider": _NON_EMPTY,
    "tokenizer": 'must be a mapping with a "kind" key, got {kind}',
    "tokenizer.kind": f"must be one of {', '.join(TOKENIZER_KINDS)}, got {{value}}",
    "tokenizer.encoding": _NON_EMPTY,
    "tokenizer.path": "must be a path or a list of candidate paths (first existing wins), got {got}",
    "tokenizer.pat_str": "is required for kind tiktoken_file: the tokenizer's split regex",
    "tokenizer.special_tokens": "must be {{start: <first id>, tokens: [...]}} or a mapping of token to id "
    'such as {{"<|endoftext|>": 100257}}, got {got}',
    "tokenizer.special_tokens.start": "must be a non-negative integer id, got {value}",
    "tokenizer.special_tokens.tokens": 'must be a list of strings or {{format: "<|extra_{{i}}|>", count: 205}}, '
    "got {got}",
    "tokenizer.normalize": "must be NFC or NFKC or absent, got {value}",
    "tokenizer.hub_id": _NON_EMPTY,
    "tokenizer.trust_remote_code": "must be true or false, got {value}",
    "tokenizer.chat_template": _NON_EMPTY,
    "chat_format": f"must be one of {', '.join(CHAT_FORMATS)}, got {{value}}",
    **PRICE_EXPECTED,
    "note": _NON_EMPTY,
}
_MISSING: Final[dict[str, str]] = {  # absent (or null), these get a hint of their own
    "tokenizer.encoding": 'is required for kind tiktoken, e.g. "cl100k_base"',
    "tokenizer.path": 'is required for kind tiktoken_file: a .tiktoken file or "package:<package>/<relative path>"',
}
_TAGS: Final = frozenset((*TOKENIZER_KINDS, "range", *PRICE_TAGS))  # union branches, as named in an error's location


class CatalogError(ConfigurationError, ValueError):
    """A model catalog file that cannot be used; the message names file, entry, field and fix."""


def _regex_match(pattern: str) -> str:
    try:
        if pattern.startswith(REGEX_PREFIX):
            re.compile(pattern[len(REGEX_PREFIX) :], re.IGNORECASE)
    except re.error as exc:
        raise problem(f"match is not a valid regular expression after 're:': {exc}") from None
    return pattern


def _paths(value: object, info: ValidationInfo) -> tuple[str, ...]:
    """One path or a list of candidates; a relative path is relative to the catalog file."""
    refs = [] if value is None else value if isinstance(value, list) else [value]
    needed = value is None and info.data.get("kind") == "tiktoken_file"  # `path: null` is no path either
    if needed or value == [] or not all(isinstance(ref, str) and ref.strip() for ref in refs):
        raise ValueError(value)
    return tuple(_file_ref(ref.strip(), info.context["base_dir"]) for ref in refs)


def _file_ref(ref: str, base_dir: Path | None) -> str:
    if not is_package_ref(ref):
        path = Path(ref).expanduser()
        return str(path if base_dir is None else base_dir / path)  # an absolute path stays as it is
    try:
        split_package_ref(ref)
    except ValueError as exc:
        raise problem(f"tokenizer.path: {exc}") from None
    return ref


def _split_regex(pat_str: str) -> str:
    try:
        # tiktoken compiles pat_str with Rust fancy-regex; the `regex` module (a tiktoken
        # dependency) understands the same \p{...} classes and catches syntax errors early.
        regex.compile(pat_str)
    except regex.error as exc:
        raise problem(f"tokenizer.pat_str is not a valid regular expression: {exc}") from None
    return pat_str


class _Repeat(Strict):  # {format: "<|extra_{i}|>", count: 205}: tokens numbered 0 to count - 1
    format: Annotated[str, StringConstraints(pattern=r"\{i\}")]
    count: int = Field(gt=0)

    def names(self) -> list[str]:
        return [self.format.replace("{i}", str(i)) for i in range(self.count)]


class _SpecialRange(Strict):  # {start: <first id>, tokens: [...]}: consecutive ids
    start: int = Field(ge=0)
    tokens: list[Annotated[str, StringConstraints(min_length=1)] | _Repeat]


def _special_pairs(tokens: _SpecialRange | dict[str, int]) -> tuple[tuple[str, int], ...]:
    if isinstance(tokens, dict):
        pairs = tuple(tokens.items())
    else:
        names = [name for item in tokens.tokens for name in ([item] if isinstance(item, str) else item.names())]
        pairs = tuple((name, tokens.start + offset) for offset, name in enumerate(names))
    if len(dict(pairs)) != len(pairs) or len({token_id for _, token_id in pairs}) != len(pairs):
        raise problem("tokenizer.special_tokens lists a token or an id twice")
    return pairs


def _special_form(value: Any) -> str:
    # A mapping of only start and tokens is the range form; any other mapping is token -> id.
    ranged = isinstance(value, dict) and "tokens" in value and set(value) <= {"start", "tokens"}
    return "range" if ranged else "pairs"


_SpecialTokens = Annotated[
    Annotated[_SpecialRange, Tag("range")] | Annotated[dict[str, int], Tag("pairs")],
    Discriminator(_special_form),
    AfterValidator(_special_pairs),
    BeforeValidator(lambda value: {} if value is None else value),  # `special_tokens: null`: none
]
_Paths = Annotated[tuple[str, ...], PlainValidator(_paths)]


class _Tiktoken(Strict):
    kind: Literal["tiktoken"]
    encoding: Name


class _TiktokenFile(Strict):
    kind: Literal["tiktoken_file"]
    path: _Paths
    pat_str: Annotated[str, StringConstraints(min_length=1), AfterValidator(_split_regex)]
    special_tokens: _SpecialTokens = ()
    normalize: Literal["NFC", "NFKC"] | None = None


class _HuggingFace(Strict):
    kind: Literal["huggingface"]
    path: _Paths = ()
    hub_id: Text | None = None
    trust_remote_code: bool = False
    chat_template: Text | None = None


class _Entry(Strict):
    match: Annotated[Name, AfterValidator(_regex_match)]
    provider: Text | None = None
    tokenizer: Annotated[_Tiktoken | _TiktokenFile | _HuggingFace, Field(discriminator="kind")] | None = None
    chat_format: Literal[*CHAT_FORMATS] | None = None
    price: PriceField | None = None
    note: Text | None = None

    @model_validator(mode="after")
    def _template_needs_huggingface(self) -> _Entry:
        if self.chat_format == "template" and not isinstance(self.tokenizer, _HuggingFace):
            raise problem('chat_format "template" needs a tokenizer of kind huggingface (it uses its chat template)')
        return self

    def to_entry(self, origin: str) -> ModelEntry:
        # The tokenizer's fields are those of TokenizerSpec.
        prices, sources = read_schedule(self.price) if self.price is not None else (None, ())
        return ModelEntry(
            pattern=self.match,
            provider=self.provider,
            tokenizer=TokenizerSpec(**dict(self.tokenizer)) if self.tokenizer is not None else None,
            chat_format=self.chat_format,
            prices=prices,
            note=self.note,
            origin=origin,
            price_sources=sources,
        )


def _show(value: object) -> str:
    if isinstance(value, date):  # a YAML date or timestamp
        return value.isoformat()
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def _kind_of(value: object) -> str:
    if isinstance(value, datetime):
        return "a time" if value.utcoffset() is not None else "a time without UTC offset"
    if isinstance(value, date):
        return "a date"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _field_path(location: Sequence[int | str]) -> tuple[str, str]:
    """The field an error is on, as (key in _EXPECTED, name shown with list indexes):
    ``("price", "history", 1, "tiers", 0, "up_to")`` -> ``("price.tiers.up_to", "price[1].tiers[0].up_to")``.
    Union tags are skipped; below a known field, anything else (a mapping's key, a union member) is part
    of its value."""
    key = shown = ""
    for part in location:
        if isinstance(part, int):  # an item of a list: "<list>[]" when the list's items have words of their own
            key, shown = (f"{key}[]" if f"{key}[]" in _EXPECTED else key), f"{shown}[{part}]"
            continue
        longer = f"{key.removesuffix('[]')}.{part}" if key else str(part)
        if longer in _EXPECTED:
            key, shown = longer, f"{shown}.{part}" if shown else str(part)
        elif part not in _TAGS:
            break
    return key, shown


def _describe(error: ErrorDetails) -> str:
    """A pydantic error in the catalog's words: ``<field> <what it must be>, got <value>``."""
    kind, (key, shown) = error["type"], _field_path(error["loc"])
    value = None if kind == "missing" else error["input"]
    context = error.get("ctx", {})
    if kind == "catalog":
        return error["msg"]
    if kind in ("unknown_field", "field_problem"):  # from Strict._known_fields, or a field below this one
        field = f"{shown}.{context['field']}" if shown else context["field"]
        return f"unknown field {field!r}{context['fix']}" if kind == "unknown_field" else f"{field} {context['text']}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # the tokenizer's kind
        key, shown, value = f"{key}.kind", f"{shown}.kind", value.get("kind") if isinstance(value, dict) else None
    template = (_MISSING.get(key) if value is None else None) or _EXPECTED[key]
    got = "null" if value is None else f"{_kind_of(value)} {_show(value)}"
    text = template.format(kind=_kind_of(value), value=_show(value), got=got)
    return f"{shown} {text}" if shown else text


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
                    message = f"key {_show(key)} is given twice in one mapping"
                    raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_entry(raw: object, where: str, base_dir: Path | None, origin: str) -> ModelEntry:
    match = raw.get("match") if isinstance(raw, dict) else None
    if isinstance(match, str) and match.strip():
        where += f" (match {match.strip()!r})"
    try:
        return _Entry.model_validate(raw, context={"base_dir": base_dir}).to_entry(origin)
    except ValidationError as exc:
        raise CatalogError(f"{where}: {_describe(exc.errors()[0])}") from None  # the first problem, as before


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
    origin = BUILTIN_ORIGIN if base_dir is None else source
    return [_read_entry(raw, f"{source} entry {index}", base_dir, origin) for index, raw in enumerate(document, 1)]


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
