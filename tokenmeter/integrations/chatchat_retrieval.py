"""What Chatchat's knowledge-base chat retrieved, reported for its model call (``tokenmeter.retrieval``).

Chatchat 0.3's ``kb_chat`` (``/chat/kb_chat`` and the WebUI's ``/knowledge_base/{mode}/{id}/chat/completions``)
searches the knowledge base in a worker thread (``search_docs`` / ``search_temp_docs``), formats the
passages for the answer (``format_reference``), puts them all in the prompt and calls the model. Without
editing Chatchat, three names are wrapped:

- ``search_docs`` and ``search_temp_docs`` as ``kb_chat`` calls them: the documents come back unchanged,
  in a list that also carries the best relevance score the search's vector store computed;
- LangChain's ``VectorStore.similarity_search_with_relevance_scores``, only while such a search runs in
  the same context: the scores it computed (Chatchat's ensemble retriever drops them; LangChain's
  relevance scores are higher-is-better, mostly 0 to 1). A search without them (a temporary knowledge
  base's, or an ensemble whose vector half found nothing) reports no score;
- ``format_reference`` as ``kb_chat`` calls it, in the answer's own context right before the prompt is
  built: there ``tokenmeter.retrieval(len(docs), top_score)`` is set, so the model call carries it.

Search-engine mode retrieves no knowledge-base passages: it reports nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

import wrapt

from tokenmeter.instrumentation.retrieval import retrieval
from tokenmeter.instrumentation.safety import contained

KB_CHAT_MODULE: Final = "chatchat.server.chat.kb_chat"
VECTORSTORES_MODULE: Final = "langchain_core.vectorstores"
_SITE: Final = "Chatchat retrieval"

# The relevance scores of the search running in this context (a worker thread's copy of the answer's).
_SCORES: ContextVar[list[float] | None] = ContextVar("tokenmeter_chatchat_scores", default=None)


class RetrievedDocs(list[Any]):
    """The documents a search returned, as a list like any other, with the best relevance score seen."""

    top_score: float | None = None


def on_kb_chat(module: Any) -> None:
    """Post-import hook of Chatchat's kb_chat module."""
    with contained(_SITE):
        for name in ("search_docs", "search_temp_docs"):
            if hasattr(module, name):
                wrapt.wrap_function_wrapper(module, name, _search_with_scores)
        wrapt.wrap_function_wrapper(module, "format_reference", _report_retrieval)


def on_vectorstores(module: Any) -> None:
    """Post-import hook of LangChain's vectorstores module."""
    with contained(_SITE):
        wrapt.wrap_function_wrapper(module, "VectorStore.similarity_search_with_relevance_scores", _keep_scores)


def _search_with_scores(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:  # fmt: skip
    scores: list[float] = []
    token = _SCORES.set(scores)
    try:
        docs = wrapped(*args, **kwargs)
    finally:
        _SCORES.reset(token)
    with contained(_SITE):
        if type(docs) is list:
            found = RetrievedDocs(docs)
            found.top_score = max(scores) if scores else None
            return found
    return docs


def _keep_scores(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    found = wrapped(*args, **kwargs)
    scores = _SCORES.get()
    if scores is not None:
        with contained(_SITE):
            scores.extend(float(score) for _doc, score in found)
    return found


def _report_retrieval(wrapped: Callable[..., Any], _instance: Any, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """format_reference(kb_name, docs, api_base_url): the passages kb_chat is about to put in the prompt."""
    with contained(_SITE):
        docs = args[1] if len(args) > 1 else kwargs.get("docs")
        if isinstance(docs, list):
            retrieval(len(docs), getattr(docs, "top_score", None))  # for the rest of the answer's context
    return wrapped(*args, **kwargs)
