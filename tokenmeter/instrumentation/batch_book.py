"""What one process remembers of the batches it sees: uploads, submitters, the batch behind each result file.

- the bytes of ``files.create(purpose="batch")`` uploads, so the quota check at submission reads a batch's
  requests without downloading them (bounded by total size; taken out when a batch is created from them);
- the submitter of each batch created here (its attribution, kept with the batch's id);
- for each output or error file a retrieved (or created) batch names, that batch: its id, submitter, endpoint
  and times;
- which result files were metered already, so a file read twice is metered once.

Every collection is bounded (oldest out first) and guarded by one lock: the SDK is called from many threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from tokenmeter.instrumentation.attribution import Attribution
from tokenmeter.instrumentation.batch_metadata import attribution_of
from tokenmeter.instrumentation.openai_payload import field_of

MAX_UPLOAD_BYTES: Final = 64 * 1024 * 1024  # uploads remembered at once; a bigger one is downloaded when checked
MAX_BATCHES: Final = 10_000  # batches, result files and metered files remembered (each)


@dataclass(frozen=True)
class SubmittedBatch:
    """A batch as its result files are metered: who submitted it, what it ran, when (Unix seconds)."""

    batch_id: str
    submitter: Attribution | None  # None: not known here, nor in its metadata
    endpoint: str | None
    created_at: int | None
    completed_at: int | None


def _bounded_put(items: OrderedDict[str, Any], key: str, value: Any) -> None:
    items[key] = value
    items.move_to_end(key)
    while len(items) > MAX_BATCHES:
        items.popitem(last=False)


def _seconds(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class BatchBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uploads: OrderedDict[str, bytes] = OrderedDict()
        self._upload_bytes = 0
        self._submitters: OrderedDict[str, Attribution] = OrderedDict()
        self._files: OrderedDict[str, SubmittedBatch] = OrderedDict()
        self._metered: OrderedDict[str, None] = OrderedDict()

    def remember_upload(self, file_id: str, data: bytes) -> None:
        if len(data) > MAX_UPLOAD_BYTES:
            return
        with self._lock:
            self._uploads[file_id] = data
            self._upload_bytes += len(data)
            while self._upload_bytes > MAX_UPLOAD_BYTES:
                _, dropped = self._uploads.popitem(last=False)
                self._upload_bytes -= len(dropped)

    def take_upload(self, file_id: str) -> bytes | None:
        """An upload's bytes, forgotten here (a batch is created from it once)."""
        with self._lock:
            data = self._uploads.pop(file_id, None)
            if data is not None:
                self._upload_bytes -= len(data)
            return data

    def remember_submitter(self, batch_id: str, who: Attribution) -> None:
        with self._lock:
            _bounded_put(self._submitters, batch_id, who)

    def remember_batch(self, batch: Any) -> None:
        """A batch object the SDK returned (created or retrieved): its result files, once it has them."""
        batch_id = _text(field_of(batch, "id"))
        files = [file_id for name in ("output_file_id", "error_file_id")
                 if (file_id := _text(field_of(batch, name))) is not None]  # fmt: skip
        if batch_id is None or not files:
            return
        with self._lock:
            submitter = self._submitters.get(batch_id)
        submitted = SubmittedBatch(
            batch_id=batch_id,
            submitter=submitter or attribution_of(field_of(batch, "metadata")),
            endpoint=_text(field_of(batch, "endpoint")),
            created_at=_seconds(field_of(batch, "created_at")),
            completed_at=_seconds(field_of(batch, "completed_at")),
        )
        with self._lock:
            for file_id in files:
                _bounded_put(self._files, file_id, submitted)

    def batch_of(self, file_id: str) -> SubmittedBatch | None:
        with self._lock:
            return self._files.get(file_id)

    def first_reading(self, file_id: str) -> bool:
        """True the first time a result file is metered in this process (and marks it metered)."""
        with self._lock:
            if file_id in self._metered:
                return False
            _bounded_put(self._metered, file_id, None)
            return True
