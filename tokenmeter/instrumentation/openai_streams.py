"""Stream wrappers that meter a streamed completion without changing what the caller sees.

The proxy forwards every attribute to the SDK's Stream / AsyncStream. It watches
the chunks go by and finishes the call exactly once: at the end of the stream,
when it fails, when the caller closes it or leaves its `with` block early, or,
for a caller that just stops reading, when the stream is garbage-collected.
With `TOKENMETER_STREAM_USAGE=inject` it hides the usage-only final chunk from
callers that did not ask for it. A stream finished before its end was read (and without
a finish reason: the answer's last chunk) is marked ``tokenmeter.stream.incomplete``.
A Responses API stream is read by its own accumulator (`ResponsesStreamAccumulator`:
events rather than chunks; its end is the ``response.completed`` event).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import wrapt

from tokenmeter.instrumentation.openai_payload import StreamAccumulator, is_usage_only_chunk
from tokenmeter.instrumentation.safety import contained, never_raises


class _StreamMeter:
    """The metering state of one stream, kept apart from the proxy so a finalizer can use it."""

    def __init__(self, finish: Any, hide_usage_chunk: bool, accumulator: StreamAccumulator) -> None:
        self.accumulator = accumulator
        self.hide_usage_chunk = hide_usage_chunk
        self._finish = finish
        self._done = False
        self._lock = threading.Lock()

    @never_raises("stream chunk", True)  # the caller sees every chunk when tokenmeter fails
    def observe(self, chunk: Any) -> bool:
        """Record a chunk; True if the caller should see it."""
        self.accumulator.observe(chunk)
        return not (self.hide_usage_chunk and is_usage_only_chunk(chunk))

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        with contained("stream finish"):
            self._finish(self.accumulator, error)


class MeteredStream(wrapt.ObjectProxy):  # type: ignore[misc]
    def __init__(
        self, stream: Any, finish: Any, hide_usage_chunk: bool, accumulator: StreamAccumulator | None = None
    ) -> None:
        super().__init__(stream)
        meter = _StreamMeter(finish, hide_usage_chunk, accumulator if accumulator is not None else StreamAccumulator())
        self._self_meter = meter
        weakref.finalize(self, meter.finish)

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        meter = self._self_meter
        while True:
            try:
                chunk = self.__wrapped__.__next__()
            except StopIteration:
                meter.accumulator.ended = True
                meter.finish()
                raise
            except BaseException as exc:
                meter.finish(exc)
                raise
            if meter.observe(chunk):
                return chunk

    def __enter__(self) -> MeteredStream:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_meter.finish(exc_info[1])

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_meter.finish()


class MeteredAsyncStream(wrapt.ObjectProxy):  # type: ignore[misc]
    def __init__(
        self, stream: Any, finish: Any, hide_usage_chunk: bool, accumulator: StreamAccumulator | None = None
    ) -> None:
        super().__init__(stream)
        meter = _StreamMeter(finish, hide_usage_chunk, accumulator if accumulator is not None else StreamAccumulator())
        self._self_meter = meter
        weakref.finalize(self, meter.finish)

    def __aiter__(self) -> MeteredAsyncStream:
        return self

    async def __anext__(self) -> Any:
        meter = self._self_meter
        while True:
            try:
                chunk = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                meter.accumulator.ended = True
                meter.finish()
                raise
            except BaseException as exc:
                meter.finish(exc)
                raise
            if meter.observe(chunk):
                return chunk

    async def __aenter__(self) -> MeteredAsyncStream:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_meter.finish(exc_info[1])

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_meter.finish()


class MeteredRawResponse(wrapt.ObjectProxy):  # type: ignore[misc]
    """A `with_raw_response` result of a streamed call: its parsed stream is the metered one.

    The SDK caches what `parse()` returns; so does this proxy, so the caller gets one
    metered stream however often it parses. If the caller never parses, the call is
    finished (with what is known: the input) when the response is garbage-collected.
    """

    def __init__(self, raw: Any, meter_stream: Any, finish_unread: Any) -> None:
        super().__init__(raw)
        self._self_meter_stream = meter_stream
        self._self_stream: Any = None
        self._self_unread = weakref.finalize(self, finish_unread)

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        parsed = self.__wrapped__.parse(*args, **kwargs)
        if self._self_stream is None:
            self._self_unread.detach()
            self._self_stream = self._self_meter_stream(parsed)
        return self._self_stream
