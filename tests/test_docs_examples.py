"""Catalog examples in the docs are valid catalog files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tokenmeter.catalog import ModelCatalog

DOCS = Path(__file__).resolve().parents[1] / "docs"
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _catalog_examples() -> list[tuple[str, str]]:
    examples = []
    for doc in sorted(DOCS.glob("*.md")):
        for block in YAML_BLOCK.findall(doc.read_text(encoding="utf-8")):
            data = yaml.safe_load(block)
            if isinstance(data, list) and data and all(isinstance(e, dict) and "match" in e for e in data):
                examples.append((doc.name, block))
    return examples


@pytest.mark.parametrize(("doc", "block"), _catalog_examples())
def test_catalog_example_loads(doc: str, block: str, tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(block, encoding="utf-8")
    catalog = ModelCatalog.load(path)
    assert any(entry.origin != "builtin" for entry in catalog.entries), doc


def test_the_qwen_example_counts_like_the_built_in_entry(tmp_path: Path) -> None:
    from tokenmeter.tokenizers import TokenizerRegistry

    [(_, block)] = [(d, b) for d, b in _catalog_examples() if d == "instrumentation.md"]
    path = tmp_path / "models.yaml"
    path.write_text(block, encoding="utf-8")
    documented = TokenizerRegistry(ModelCatalog.load(path))
    built_in = TokenizerRegistry(ModelCatalog.load(None))
    text = "人工智能（AI）是计算机科学的一个分支。It studies agents 🤖 and `code()`."
    assert documented.count_text("qwen2.5-7b-instruct", text) == built_in.count_text("qwen2.5-7b-instruct", text)
    assert documented.count_text("qwen2.5-7b-instruct", text).source == "tokenizer"
