"""tokenmeter.stream.incomplete: a streamed answer the caller closed or dropped before its end is marked on its span
(the waste report's "streams never read to the end", docs/waste.md). The real openai SDK against the local
OpenAI-compatible server, the real OTel SDK with in-memory exporters."""

from __future__ import annotations

import gc

import openai
from openai_server import REPLY_CHUNKS, OpenAICompatibleServer
from telemetry_fixtures import Telemetry
from test_openai_instrumentation import MESSAGES, MODEL, catalog, client_for, instrumented, only_span, registry

from tokenmeter import semconv

__all__ = ["catalog", "instrumented", "registry"]  # the fixtures, used by name


def test_half_a_stream_then_closed_is_incomplete(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    stream = client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    read = [next(stream).choices[0].delta.content for _ in range(len(REPLY_CHUNKS) // 2)]
    stream.close()
    assert read == REPLY_CHUNKS[: len(REPLY_CHUNKS) // 2]
    span = only_span(instrumented)
    assert span.attributes[semconv.TM_STREAM_INCOMPLETE] is True
    assert semconv.ERROR_TYPE not in span.attributes  # closing is not a failure


def test_a_stream_read_to_the_end_is_not_marked(instrumented: Telemetry, openai_server: OpenAICompatibleServer) -> None:
    with client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        pieces = [chunk.choices[0].delta.content for chunk in stream]
    assert pieces == REPLY_CHUNKS
    assert semconv.TM_STREAM_INCOMPLETE not in only_span(instrumented).attributes


def test_closed_after_the_answers_last_chunk_is_not_marked(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    """A caller that stops at the finish reason got the whole answer (the stream's end was not read)."""
    stream = client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    for chunk in stream:
        if chunk.choices[0].finish_reason is not None:
            break
    stream.close()
    assert semconv.TM_STREAM_INCOMPLETE not in only_span(instrumented).attributes


def test_a_dropped_stream_is_incomplete_when_collected(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    stream = client_for(openai_server).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()
    assert only_span(instrumented).attributes[semconv.TM_STREAM_INCOMPLETE] is True


async def test_an_async_stream_left_early_is_incomplete(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async with stream:
        async for _chunk in stream:
            break
    await client.close()
    assert only_span(instrumented).attributes[semconv.TM_STREAM_INCOMPLETE] is True


async def test_an_async_stream_read_to_the_end_is_not_marked(
    instrumented: Telemetry, openai_server: OpenAICompatibleServer
) -> None:
    client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    pieces = [chunk.choices[0].delta.content async for chunk in stream]
    await client.close()
    assert pieces == REPLY_CHUNKS
    assert semconv.TM_STREAM_INCOMPLETE not in only_span(instrumented).attributes
