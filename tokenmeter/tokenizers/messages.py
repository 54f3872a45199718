"""OpenAI-style chat messages, read into one plain shape for counting.

Accepts dicts (``role``, ``content``, optional ``name``, ``tool_calls``,
``tool_call_id``) and objects with ``model_dump()`` (the openai SDK's pydantic
types, LangChain messages). ``content`` may be a string, None, or a list of parts:
text parts (``{"type": "text", "text": ...}``) are joined with newlines, as
OpenAI-compatible servers such as vLLM do; image, audio and other parts are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# LangChain message ``type`` -> OpenAI ``role``.
_LANGCHAIN_ROLES: Final = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_TEXT_PART_TYPES: Final = ("text", "input_text", "output_text")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the JSON arguments as the client sent them

    @property
    def canonical_arguments(self) -> str:
        """Arguments as a chat template's ``tojson`` re-serialises them (servers parse the JSON first)."""
        try:
            return json.dumps(json.loads(self.arguments), ensure_ascii=False)
        except ValueError:
            return self.arguments


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        return self.content or ""

    def as_template_message(self) -> dict[str, Any]:
        """The OpenAI-shaped dict a Hugging Face chat template expects.

        ``content`` is always a string (``""`` for none): transformers 5 drops None-valued
        keys, and templates written as ``'<｜Assistant｜>' + message['content']`` then fail.
        """
        out: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [
                {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _as_mapping(value: object, where: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    raise TypeError(f"{where} must be a mapping like {{'role': 'user', 'content': '...'}}, got {type(value).__name__}")


def content_text(content: object) -> str | None:
    """The text of a message's content; None when there is none."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            mapping = part if isinstance(part, Mapping) else getattr(part, "model_dump", lambda: None)()
            if isinstance(mapping, Mapping) and mapping.get("type", "text") in _TEXT_PART_TYPES:
                text = mapping.get("text")
                if isinstance(text, str):
                    texts.append(text)
        return "\n".join(texts)
    return str(content)


def _tool_call(raw: object, where: str) -> ToolCall:
    call = _as_mapping(raw, where)
    function = call.get("function")
    function = _as_mapping(function, f"{where}.function") if function is not None else call
    name = function.get("name") or ""
    arguments = function.get("arguments", function.get("args", ""))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(name=str(name), arguments=arguments)


def read_message(raw: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    message = _as_mapping(raw, where)
    role = message.get("role") or _LANGCHAIN_ROLES.get(str(message.get("type")))
    if not isinstance(role, str) or not role:
        raise ValueError(f'{where}: role is required, e.g. "system", "user", "assistant" or "tool"')
    tool_calls = message.get("tool_calls") or ()
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, str):
        raise TypeError(f"{where}.tool_calls must be a list, got {type(tool_calls).__name__}")
    name = message.get("name")
    tool_call_id = message.get("tool_call_id")
    return ChatMessage(
        role=role,
        content=content_text(message.get("content")),
        name=name if isinstance(name, str) and name else None,
        tool_calls=tuple(_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(tool_calls)),
        tool_call_id=tool_call_id if isinstance(tool_call_id, str) and tool_call_id else None,
    )


def read_messages(messages: Sequence[object]) -> list[ChatMessage]:
    """Messages in one plain shape; raises TypeError/ValueError naming the bad message."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of chat messages, got {type(messages).__name__}")
    return [read_message(raw, index) for index, raw in enumerate(messages)]
