"""The bytes of the Batch API's files as the openai SDK handles them: an upload's, and a downloaded file's.

Read without taking anything from the SDK or the app: an upload's file object is put back where it was, and a
download whose body has not been read (a streamed response) is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokenmeter.instrumentation.batch_book import MAX_UPLOAD_BYTES


def upload_bytes(file: Any) -> bytes | None:
    """What ``files.create(file=...)`` sends: bytes, a path, a seekable binary file (read, then put back where it
    was), or a ``(name, content, ...)`` tuple of one of these; None for anything else (a pipe, a text file) and for
    more than `MAX_UPLOAD_BYTES` (the quota check then downloads the file)."""
    if isinstance(file, tuple) and len(file) >= 2:
        file = file[1]
    if isinstance(file, bytes | bytearray | memoryview):
        return bytes(file) if len(file) <= MAX_UPLOAD_BYTES else None
    if isinstance(file, os.PathLike):
        path = Path(file)
        return path.read_bytes() if path.stat().st_size <= MAX_UPLOAD_BYTES else None
    seekable = getattr(file, "seekable", None)
    if not (callable(seekable) and seekable()):
        return None
    position = file.tell()
    try:
        if file.seek(0, os.SEEK_END) - position > MAX_UPLOAD_BYTES:
            return None
        file.seek(position)
        data = file.read()
    finally:
        file.seek(position)
    return data if isinstance(data, bytes) else None


def content_bytes(result: Any) -> bytes | None:
    """The bytes of what ``files.content`` (or ``retrieve_content``, or their raw responses) returned, when its
    body has been read already; None otherwise."""
    if isinstance(result, str):
        return result.encode()
    response = getattr(result, "response", None)  # HttpxBinaryResponseContent's
    if response is None:
        response = getattr(result, "http_response", None)  # a raw response's (with_raw_response)
    try:
        data = response.content if response is not None else None  # raises for a body not read yet
    except Exception:
        return None
    return data if isinstance(data, bytes) else None
