"""ChatML as Qwen's Hugging Face chat templates render text and tool messages.

Each message is ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` and the generation
prompt is ``<|im_start|>assistant\\n``. The variants differ as the templates do:

- ``chatml`` (Qwen 1, 1.5, 2): default system "You are a helpful assistant." when the
  first message is not a system message; tool calls are not rendered (the templates
  have none); a ``tool`` message is an ordinary turn.
- ``chatml-qwen2.5``: default system "You are Qwen, created by Alibaba Cloud. You are a
  helpful assistant."; assistant tool calls as ``<tool_call>`` JSON blocks; consecutive
  tool results grouped in one user turn as ``<tool_response>`` blocks.
- ``chatml-nosystem`` (Qwen3): no default system; Qwen2.5's tool format; ``<think>``
  blocks are dropped from assistant turns before the last user query and kept (as
  ``<think>\\n...\\n</think>\\n\\n``) after it.
- ``chatml-think`` (Qwen3.5/3.6, QwQ, Qwen3 thinking models): as ``chatml-nosystem``,
  and the generation prompt opens the reasoning block: ``<|im_start|>assistant\\n<think>\\n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tokenmeter.tokenizers.messages import ChatMessage, ToolCall

IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
DEFAULT_SYSTEM: Final[dict[str, str | None]] = {
    "chatml": "You are a helpful assistant.",
    "chatml-qwen2.5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "chatml-nosystem": None,
    "chatml-think": None,
}
CHATML_FORMATS: Final = tuple(DEFAULT_SYSTEM)
_GENERATION_PROMPT: Final = {"chatml-think": f"{IM_START}assistant\n<think>\n"}
_QWEN3_STYLE: Final = ("chatml-nosystem", "chatml-think")


def _turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _tool_call_block(call: ToolCall) -> str:
    return f'<tool_call>\n{{"name": "{call.name}", "arguments": {call.canonical_arguments}}}\n</tool_call>'


def _last_query_index(messages: Sequence[ChatMessage]) -> int:
    """Index of the last real user query (not a wrapped tool response), as Qwen3's template finds it."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        text = message.text
        if message.role == "user" and not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
            return index
    return len(messages) - 1


def _qwen3_assistant(message: ChatMessage, index: int, last_query: int, is_last: bool) -> str:
    content = message.text
    reasoning = ""
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    if index > last_query and (is_last or reasoning):
        body = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
    else:
        body = content
    out = f"{IM_START}assistant\n{body}"
    for position, call in enumerate(message.tool_calls):
        if position > 0 or content:
            out += "\n"
        out += _tool_call_block(call)
    return out + f"{IM_END}\n"


def _qwen25_assistant(message: ChatMessage) -> str:
    out = f"{IM_START}assistant"
    if message.content:
        out += "\n" + message.content
    for call in message.tool_calls:
        out += "\n" + _tool_call_block(call)
    return out + f"{IM_END}\n"


def render_chatml(messages: Sequence[ChatMessage], chat_format: str) -> str:
    """The prompt text the server builds for ``messages``, ending with the generation prompt."""
    if chat_format not in DEFAULT_SYSTEM:
        raise ValueError(f"not a ChatML format: {chat_format!r}; expected one of {', '.join(CHATML_FORMATS)}")
    parts: list[str] = []
    default_system = DEFAULT_SYSTEM[chat_format]
    if default_system is not None and (not messages or messages[0].role != "system"):
        parts.append(_turn("system", default_system))
    if chat_format == "chatml":
        parts.extend(_turn(message.role, message.text) for message in messages)
    else:
        last_query = _last_query_index(messages)
        for index, message in enumerate(messages):
            is_last = index == len(messages) - 1
            if message.role == "assistant":
                if chat_format in _QWEN3_STYLE:
                    parts.append(_qwen3_assistant(message, index, last_query, is_last))
                elif message.tool_calls:
                    parts.append(_qwen25_assistant(message))
                else:
                    parts.append(_turn("assistant", message.text))
            elif message.role == "tool":
                previous_is_tool = index > 0 and messages[index - 1].role == "tool"
                next_is_tool = not is_last and messages[index + 1].role == "tool"
                parts.append(
                    ("" if previous_is_tool else f"{IM_START}user")
                    + f"\n<tool_response>\n{message.text}\n</tool_response>"
                    + ("" if next_is_tool else f"{IM_END}\n")
                )
            else:
                parts.append(_turn(message.role, message.text))
    parts.append(_GENERATION_PROMPT.get(chat_format, f"{IM_START}assistant\n"))
    return "".join(parts)
