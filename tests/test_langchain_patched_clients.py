"""Which LangChain classes the callback handler leaves to a patched client (metered there, never twice).

A pure function of LangChain's serialized class id and the model: runs without LangChain installed.
"""

from __future__ import annotations

import pytest

from tokenmeter.integrations.langchain_callback import is_metered_by_the_sdk, provider_of


@pytest.mark.parametrize(
    ("identifier", "model", "patched"),
    [
        (["langchain", "chat_models", "openai", "ChatOpenAI"], "gpt-4o", True),
        (["langchain_openai", "chat_models", "base", "ChatOpenAI"], "qwen-plus", True),
        (["langchain_ollama", "chat_models", "ChatOllama"], "qwen2.5:7b", True),
        # langchain_community's own Ollama classes call Ollama's HTTP API with requests, not the ollama client.
        (["langchain_community", "chat_models", "ollama", "ChatOllama"], "qwen2.5:7b", False),
        (["langchain_community", "chat_models", "tongyi", "ChatTongyi"], "qwen-max", True),
        (["langchain_community", "llms", "tongyi", "Tongyi"], "qwen-turbo", True),
        # Tongyi's vision models call MultiModalConversation, which is not patched: metered by the callback.
        (["langchain_community", "chat_models", "tongyi", "ChatTongyi"], "qwen-vl-max", False),
        (["langchain_community", "chat_models", "baidu_qianfan_endpoint", "QianfanChatEndpoint"], "ernie-4.0", False),
        (["langchain_community", "llms", "xinference", "Xinference"], "qwen2.5-7b-instruct", False),
    ],
)
def test_a_class_is_left_to_its_patched_client(identifier: list[str], model: str, patched: bool) -> None:
    assert is_metered_by_the_sdk({"id": identifier}, model) is patched


def test_no_serialized_class_is_metered_by_the_callback() -> None:
    assert not is_metered_by_the_sdk(None)
    assert not is_metered_by_the_sdk({})


@pytest.mark.parametrize(
    ("identifier", "provider"),
    [
        (["langchain_community", "chat_models", "ollama", "ChatOllama"], "ollama"),
        (["langchain_community", "chat_models", "tongyi", "ChatTongyi"], "dashscope"),
        (["langchain_community", "chat_models", "baidu_qianfan_endpoint", "QianfanChatEndpoint"], "baidu"),
        (["langchain_community", "llms", "xinference", "Xinference"], "xinference"),
        (["langchain", "chat_models", "zhipuai", "ChatZhipuAI"], "zhipu"),
        (["my_app", "models", "house_llm", "HouseLLM"], "house_llm"),  # a class that names no provider: its module
        ([], "langchain"),
    ],
)
def test_a_runs_provider_is_named_from_its_class_never_openai_by_default(identifier: list[str], provider: str) -> None:
    assert provider_of({"id": identifier}) == provider
