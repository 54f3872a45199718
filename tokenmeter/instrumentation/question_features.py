"""What a chat call asks, measured before it is made: the question's length, the conversation's depth,
the prompt's size (docs/instrumentation.md, docs/routing.md).

Pure and cheap: one pass over the request's messages (as metering captured them: plain dicts), counting
characters, no tokenizing and no copies of the text beyond the question itself (the text parts of a
list content are joined; a string content is the caller's own string). Images, audio and other
non-text parts are not text and count for nothing.

- the question: the text of the last message with role ``user``;
- depth: the number of ``user`` messages (1: a first question);
- prompt characters: the text of every message, whatever its role (system, history, tool results).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tokenmeter import semconv
from tokenmeter.instrumentation.attribute_maps import AttributeMap
from tokenmeter.instrumentation.retrieval import RetrievalHint, current_retrieval
from tokenmeter.quota_wire import RouteFeatures

_TEXT_PART_TYPES: Final = frozenset({"text", "input_text"})


@dataclass(slots=True)  # (not frozen: a frozen dataclass takes three times as long to make, on every call)
class QuestionFeatures:
    """A chat call's question and its measures; ``question`` stays in the process (never exported)."""

    question: str  # a list content's text parts joined by newlines
    question_chars: int  # the characters of the question's text (its parts' characters, without the joins)
    depth: int
    prompt_chars: int

    def attributes(self) -> AttributeMap:
        return {
            semconv.TM_QUESTION_CHARS: self.question_chars,
            semconv.TM_CONVERSATION_DEPTH: self.depth,
            semconv.TM_PROMPT_CHARS: self.prompt_chars,
        }


NO_QUESTION: Final = QuestionFeatures("", 0, 0, 0)  # (never changed: shared)


def question_features(messages: Any) -> QuestionFeatures:
    """The features of a chat request's ``messages`` (anything else: no question, nothing counted)."""
    # (Exact type checks first: metering hands over a list of dicts, and an ABC check costs more per call.)
    if type(messages) is not list and (not isinstance(messages, Sequence) or isinstance(messages, str)):
        return NO_QUESTION
    question: Any = None  # the last user message's content, read as text only once found
    depth = prompt_chars = question_chars = 0
    for message in messages:
        if type(message) is not dict and not isinstance(message, Mapping):
            continue
        content = message.get("content")
        chars = _text_length(content)
        prompt_chars += chars
        if message.get("role") == "user":
            depth += 1
            question, question_chars = content, chars
    return QuestionFeatures(_text_of(question), question_chars, depth, prompt_chars)


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(text) for text in _text_parts(content))
    return 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_parts(content))
    return ""


def _text_parts(parts: list[Any]) -> list[str]:
    """The text of a content list's text parts (``{"type": "text", "text": ...}``; bare strings too)."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif (type(part) is dict or isinstance(part, Mapping)) and part.get("type") in _TEXT_PART_TYPES:
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


@dataclass(slots=True)
class AskedQuestion:
    """What routing may know of a chat call before it is made: its features, the retrieval the app reported,
    the app's HTTP route."""

    features: QuestionFeatures
    retrieval: RetrievalHint | None = None
    app_route: str | None = None

    def attributes(self) -> AttributeMap:
        attributes = self.features.attributes()
        if self.retrieval is not None:
            attributes.update(self.retrieval.attributes())
        return attributes

    def route_features(self, intent: str | None) -> RouteFeatures:
        """What the quota check carries (never the question's text); ``intent``: the app's classifier's label."""
        hint = self.retrieval
        return RouteFeatures.model_construct(
            intent=intent, question_chars=self.features.question_chars, depth=self.features.depth,
            passages=None if hint is None else hint.passages, top_score=None if hint is None else hint.top_score,
            app_route=self.app_route,
        )  # fmt: skip


def asked_question(messages: Any, app_route: str | None) -> AskedQuestion:
    """A chat call's question as the running context knows it (its retrieval hint) and ``app_route``."""
    return AskedQuestion(question_features(messages), current_retrieval(), app_route)
