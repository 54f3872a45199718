"""Read DashScope's `TextEmbedding.call` as an embeddings call, for metering it like the openai SDK's.

The request's ``input`` is a text or a list of texts (the SDK also takes an open file, one text per line: that is
not read here, it is the SDK's to read; its count is left to the server). The response carries ``request_id`` and
``usage.total_tokens``, the billed input; the SDK returns an error response (``status_code`` other than 200) rather
than raising, as for Generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenmeter.instrumentation.openai_payload import field_of
from tokenmeter.instrumentation.responses_payload import ChatShapedResponse


def request_view(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request as metering reads an embeddings call's: model and the input texts."""
    texts = kwargs.get("input")
    readable = isinstance(texts, str) or (isinstance(texts, list) and all(isinstance(text, str) for text in texts))
    return {"model": kwargs.get("model"), "input": texts if readable else ""}


def response_view(response: Any) -> ChatShapedResponse:
    """``usage.total_tokens`` as the input count (None when the server reported none: the SDK's empty usage)."""
    total = field_of(field_of(response, "usage"), "total_tokens")
    reported = isinstance(total, int) and not isinstance(total, bool) and total > 0
    request_id = field_of(response, "request_id")
    return ChatShapedResponse(
        id=request_id if isinstance(request_id, str) and request_id else None,
        model=None,  # not named in the response: priced as requested
        usage={"prompt_tokens": total, "total_tokens": total} if reported else None,
    )
