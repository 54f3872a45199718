"""Counting chat input as the server sees it, per chat format (see docs/catalog.md).

- ``openai`` / ``openai-0301``: the OpenAI cookbook rule. Each message costs
  ``TOKENS_PER_MESSAGE`` plus the tokens of its role, content, name and tool_call_id
  (and of each tool call's function name and JSON arguments); a name adds
  ``TOKENS_PER_NAME``; the reply is primed with ``REPLY_PRIMING`` tokens. For
  gpt-3.5-turbo-0301 the per-message cost is 4 and a name costs -1.
- ChatML formats: the prompt text is rendered (``chatml.render_chatml``) and encoded
  with special tokens recognised.
- ``generic``: the same sum as the OpenAI rule with ``GENERIC_TOKENS_PER_MESSAGE`` (4)
  per message and ``GENERIC_REPLY_PRIMING`` (3) for the reply: about what ChatML-like
  templates add (a start marker, role, newline and end marker per message).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from tokenmeter.tokenizers.messages import ChatMessage

OPENAI_FORMATS: Final = ("openai", "openai-0301")
# (tokens per message, tokens per name) by chat format.
_OPENAI_RULES: Final = {"openai": (3, 1), "openai-0301": (4, -1)}
REPLY_PRIMING: Final = 3
GENERIC_TOKENS_PER_MESSAGE: Final = 4
GENERIC_REPLY_PRIMING: Final = 3
GENERIC_OVERHEAD_SUFFIX: Final = "+generic-overhead"


def _message_text_tokens(count_text: Callable[[str], int], message: ChatMessage, tokens_per_name: int) -> int:
    total = count_text(message.role) + count_text(message.text)
    if message.name is not None:
        total += count_text(message.name) + tokens_per_name
    if message.tool_call_id is not None:
        total += count_text(message.tool_call_id)
    for call in message.tool_calls:
        total += count_text(call.name) + count_text(call.arguments)
    return total


def count_openai(count_text: Callable[[str], int], messages: Sequence[ChatMessage], chat_format: str) -> int:
    tokens_per_message, tokens_per_name = _OPENAI_RULES[chat_format]
    return REPLY_PRIMING + sum(
        tokens_per_message + _message_text_tokens(count_text, message, tokens_per_name) for message in messages
    )


def count_generic(count_text: Callable[[str], int], messages: Sequence[ChatMessage]) -> int:
    return GENERIC_REPLY_PRIMING + sum(
        GENERIC_TOKENS_PER_MESSAGE + _message_text_tokens(count_text, message, 0) for message in messages
    )
