"""Chatchat 0.3's chat routes, as the quota pre-check and the answer notices see them.

For each route: where its request names the model and the input text; what a ``degrade``
decision does to it; and in which shape its answer reaches the person, so a notice can be
added where they read (``None``: the answer is left as the model wrote it).

- ``/chat/chat/completions``: plain and agent chat of the WebUI (OpenAI-shaped chunks);
- ``/chat/kb_chat`` and ``/knowledge_base/{mode}/{id}/chat/completions`` (the OpenAI-style
  route the WebUI's knowledge-base and file pages use): Chatchat's ``return_direct`` answers
  with the retrieved passages and calls no model;
- ``/chat/file_chat`` (``{"answer"}`` / ``{"docs"}`` events): it has no ``return_direct``, but it
  retrieves before it calls the model, in a task whose errors it only logs: the request goes
  on, the model call's own check stops it, and the passages are the answer;
- ``/v1/chat/completions``: Chatchat's model-platform API, which its agent reads (a hop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

DegradeAction = Literal["return_direct", "go_on", "refuse"]
AnswerStyle = Literal["openai", "file_chat"]


@dataclass(frozen=True)
class ChatRoute:
    model_field: str
    text_fields: tuple[str, ...]
    on_degrade: DegradeAction
    answer: AnswerStyle | None


CHAT_ROUTES: Final[dict[str, ChatRoute]] = {
    "/chat/chat/completions": ChatRoute("model", ("messages",), "refuse", "openai"),
    "/v1/chat/completions": ChatRoute("model", ("messages",), "refuse", None),
    "/chat/kb_chat": ChatRoute("model", ("query", "history"), "return_direct", "openai"),
    "/chat/file_chat": ChatRoute("model_name", ("query", "history"), "go_on", "file_chat"),
}
KB_CHAT_COMPLETIONS: Final = re.compile(r"/knowledge_base/(?:local_kb|temp_kb|search_engine)/[^/]+/chat/completions")
KB_CHAT_COMPLETIONS_ROUTE: Final = ChatRoute("model", ("messages",), "return_direct", "openai")


def chat_route(path: str) -> ChatRoute | None:
    route = CHAT_ROUTES.get(path)
    if route is None and KB_CHAT_COMPLETIONS.fullmatch(path):
        return KB_CHAT_COMPLETIONS_ROUTE
    return route
