"""LangChain LLM classes that do not call the openai SDK are metered from LangChain's callbacks.

Runs where langchain-core is installed (the Chatchat venv; `make test-chatchat`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from openai_server import OpenAICompatibleServer
from telemetry_fixtures import Telemetry, make_telemetry

import tokenmeter
from tokenmeter import semconv
from tokenmeter.catalog import ModelCatalog
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
from tokenmeter.settings import Settings
from tokenmeter.tokenizers import TokenizerRegistry

pytest.importorskip("langchain_core", reason="langchain-core is not installed here (it is in the Chatchat venv)")

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage

REPLY = "根据资料，报销须在三十天内提交。"


class QwenLikeChat(FakeListChatModel):
    """A chat model outside the openai SDK (like ChatOllama), serving qwen2.5-7b-instruct."""

    @property
    def _identifying_params(self) -> dict[str, str]:
        return {"model_name": "qwen2.5-7b-instruct"}

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: object) -> dict[str, object]:
        return {**super()._get_invocation_params(stop=stop, **kwargs), "model_name": "qwen2.5-7b-instruct"}


@pytest.fixture
def instrumented() -> Iterator[Telemetry]:
    telemetry = make_telemetry()
    instrumentor = TokenmeterInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                            settings=Settings(hash_key="k"), registry=TokenizerRegistry(ModelCatalog.load(None)),
                            skip_dep_check=True)  # fmt: skip
    try:
        yield telemetry
    finally:
        instrumentor.uninstrument()


def _tokens(telemetry: Telemetry) -> dict[tuple[str, str], int]:
    return {(attributes[semconv.ENDUSER_ID], attributes[semconv.GEN_AI_TOKEN_TYPE]): value
            for attributes, value in telemetry.points(semconv.METRIC_USAGE_TOKENS)}  # fmt: skip


def test_a_chat_model_outside_the_sdk_is_metered_with_its_user(instrumented: Telemetry) -> None:
    model = QwenLikeChat(responses=[REPLY, REPLY])
    with tokenmeter.attribution(user="alice", department="研发部"):
        model.invoke([HumanMessage(content="报销要多久内提交？")])
    with tokenmeter.attribution(user="bob", department="销售部"):
        asyncio.run(model.ainvoke([HumanMessage(content="报销要多久内提交？")]))
    assert tokenmeter.flush()
    spans = instrumented.spans()
    assert [span.attributes[semconv.ENDUSER_ID] for span in spans] == ["alice", "bob"]
    registry = TokenizerRegistry(ModelCatalog.load(None))
    expected_in = registry.count_messages("qwen2.5-7b-instruct", [{"role": "user", "content": "报销要多久内提交？"}])
    expected_out = registry.count_text("qwen2.5-7b-instruct", REPLY)
    for span in spans:
        assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == "qwen2.5-7b-instruct"
        assert span.attributes[semconv.TM_USAGE_SOURCE] == semconv.SOURCE_TOKENIZER  # no usage reported: counted
        assert span.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == expected_in.tokens
        assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == expected_out.tokens
    assert _tokens(instrumented)[("bob", semconv.TOKEN_TYPE_OUTPUT)] == expected_out.tokens


def test_chat_openai_is_metered_once_by_the_sdk_not_again_by_the_callback(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    model = chat_openai(model="qwen2.5-7b-instruct", base_url=openai_server.base_url, api_key="sk-test",
                        max_retries=0)  # fmt: skip
    with tokenmeter.attribution(user="carol"):
        model.invoke("你好")
    assert tokenmeter.flush()
    assert len(instrumented.spans()) == 1
    assert len(openai_server.requests) == 1
