"""What the app retrieved for the question it is about to ask: ``tokenmeter.retrieval(passages, top_score)``.

A RAG app knows, before its chat call, how many passages it put in the prompt and how good the best one
was; routing rules can send a well-grounded short question to a small model (docs/routing.md). The
hint lives in a context variable, like the attribution: the calls made in the same context (and in
tasks started from it) carry it on their spans (``tokenmeter.retrieval.passages`` /
``tokenmeter.retrieval.top_score``) and in their quota checks.

    with tokenmeter.retrieval(len(docs), top_score=docs[0].score):
        client.chat.completions.create(...)

    tokenmeter.retrieval(len(docs), top_score=best)   # or for the rest of the running context
    client.chat.completions.create(...)

The score is the app's own (higher is better, as the rules read it); ``top_score=None``: not known.
The identity middleware starts each request without a hint and drops the request's at its end.
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from tokenmeter import semconv
from tokenmeter.instrumentation.attribute_maps import AttributeMap

__all__ = ["RetrievalHint", "RetrievalScope", "current_retrieval", "retrieval"]

MAX_PASSAGES: Final = 1_000_000  # what a check carries at most (RouteFeatures)


@dataclass(frozen=True, slots=True)
class RetrievalHint:
    passages: int
    top_score: float | None = None

    def attributes(self) -> AttributeMap:
        attributes: AttributeMap = {semconv.TM_RETRIEVAL_PASSAGES: self.passages}
        if self.top_score is not None:
            attributes[semconv.TM_RETRIEVAL_TOP_SCORE] = self.top_score
        return attributes


_CURRENT: ContextVar[RetrievalHint | None] = ContextVar("tokenmeter_retrieval", default=None)


def current_retrieval() -> RetrievalHint | None:
    """The retrieval reported for the code running now, or None."""
    return _CURRENT.get()


class RetrievalScope:
    """What :func:`retrieval` returns: the hint is set already; as a context manager it is undone on exit."""

    __slots__ = ("_token", "hint")

    def __init__(self, hint: RetrievalHint | None) -> None:
        self.hint = hint
        self._token: Token[RetrievalHint | None] | None = _CURRENT.set(hint)

    def __enter__(self) -> RetrievalHint | None:
        return self.hint

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        token, self._token = self._token, None
        if token is not None:
            with contextlib.suppress(ValueError):  # exited in another context than it was set in: nothing to undo
                _CURRENT.reset(token)


def retrieval(passages: int, top_score: float | None = None) -> RetrievalScope:
    """Report the passages put in the prompt of the calls that follow, and the best one's score.

    Takes effect at once for the current context; used as ``with retrieval(...):`` it is undone when
    the block ends. ValueError for a negative count or a score that is not a finite number.
    """
    if isinstance(passages, bool) or not isinstance(passages, int) or passages < 0:
        raise ValueError(f"passages must be a count (an int >= 0), got {passages!r}")
    if top_score is not None:
        if isinstance(top_score, bool) or not isinstance(top_score, int | float) or not math.isfinite(top_score):
            raise ValueError(f"top_score must be a finite number or None, got {top_score!r}")
        top_score = float(top_score)
    return RetrievalScope(RetrievalHint(min(passages, MAX_PASSAGES), top_score))


def no_retrieval() -> RetrievalScope:
    """A scope without a hint (a new request starts with none; its own hints end with it)."""
    return RetrievalScope(None)
