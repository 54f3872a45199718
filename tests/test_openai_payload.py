"""Reading the SDK's responses and stream chunks: extra fields servers add, and plain dicts alike."""

from __future__ import annotations

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tokenmeter.instrumentation.openai_payload import StreamAccumulator, response_output_texts


def _chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": "deepseek-reasoner",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}  # fmt: skip


def test_streamed_reasoning_content_is_part_of_the_output_for_sdk_chunks_and_dicts() -> None:
    deltas = [{"reasoning_content": "想一想"}, {"reasoning_content": "…", "content": "答"}, {"content": "案"}]
    for as_sdk_objects in (True, False):
        accumulator = StreamAccumulator()
        for delta in deltas:
            chunk = _chunk(delta)
            accumulator.observe(ChatCompletionChunk.model_validate(chunk) if as_sdk_objects else chunk)
        accumulator.observe(_chunk({}, "stop"))
        assert accumulator.output_texts() == ["想一想…答案"]
        assert accumulator.finish_reasons() == ["stop"]
        assert (accumulator.response_id, accumulator.response_model) == ("c-1", "deepseek-reasoner")


def test_reasoning_content_of_a_whole_response_is_counted_before_the_answer() -> None:
    response = ChatCompletion.model_validate({
        "id": "r-1", "object": "chat.completion", "created": 0, "model": "deepseek-reasoner",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "答案", "reasoning_content": "想一想"}}],
    })  # fmt: skip
    assert response_output_texts(response) == ["想一想答案"]
