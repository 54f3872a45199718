"""A cache hit as the OpenAI SDK's own objects, so callers cannot tell it from a call (but by its id).

`ChatCompletion` for a plain call; for ``stream=True`` a stream of `ChatCompletionChunk` (the answer in one
content chunk, then the chunk with the finish reason, then a usage chunk if the caller asked for one with
``stream_options.include_usage``) that is used as the SDK's `Stream` / `AsyncStream` are: iterated,
used in ``with`` / ``async with``, closed. The usage reported is 0 tokens: nothing was billed for it.
`openai` is imported when a hit is served, never before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from tokenmeter.answer_cache.entries import CachedAnswer

RESPONSE_ID_PREFIX = "chatcmpl-cached-"
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def new_response_id() -> str:
    """Each hit is a response of its own: a fresh id (the cached call's is not reused)."""
    return RESPONSE_ID_PREFIX + uuid.uuid4().hex


def cached_completion(answer: CachedAnswer, response_id: str, created: int | None = None) -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion(
        id=response_id,
        object="chat.completion",
        created=int(time.time()) if created is None else created,
        model=answer.model,
        choices=[
            {
                "index": 0,
                "finish_reason": answer.finish_reason,
                "message": {"role": "assistant", "content": answer.text},
            }
        ],
        usage=_NO_USAGE,
    )


def cached_chunks(answer: CachedAnswer, response_id: str, include_usage: bool, created: int | None = None) -> list[Any]:
    from openai.types.chat import ChatCompletionChunk

    common = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": answer.model,
    }
    chunks = [
        ChatCompletionChunk(
            **common,
            choices=[{"index": 0, "delta": {"role": "assistant", "content": answer.text}, "finish_reason": None}],
        ),
        ChatCompletionChunk(**common, choices=[{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]),
    ]
    if include_usage:
        chunks.append(ChatCompletionChunk(**common, choices=[], usage=_NO_USAGE))
    return chunks


class CachedStream:
    """The SDK's `Stream` as callers use it: an iterator of chunks, a context manager, ``close()``."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks: Iterator[Any] = iter(chunks)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def __enter__(self) -> CachedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._chunks = iter(())


class CachedAsyncStream:
    """The SDK's `AsyncStream` as callers use it: ``async for``, ``async with``, ``await close()``."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks: Iterator[Any] = iter(chunks)

    def __aiter__(self) -> CachedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> CachedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._chunks = iter(())
