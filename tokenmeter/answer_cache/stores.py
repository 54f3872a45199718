"""Where sealed answers live: process memory or a local directory. Both keep an entry for the TTL, hold
only what `sealing` made (bytes that are useless without the hash key), and are safe to use from many
threads. A missing, expired, unreadable or foreign entry is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

Clock = Callable[[], float]  # seconds since the epoch; time.time, or a test's clock
ENTRY_NAME: Final = re.compile(r"[0-9a-f]{64}")  # a key digest (cache_keys): the only names read or pruned
_TEMPORARY: Final = re.compile(r"\.[0-9a-f]{64}\.\d+\.\d+\.tmp")
# A directory past its max entries is pruned to this share of it, so pruning (a scan) is not done per write.
PRUNE_TO: Final = 0.9


class EntryStore(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, sealed: bytes) -> None: ...
    def remove(self, key: str) -> None: ...
    def clear(self) -> None: ...


class MemoryStore:
    """Entries in this process only: least recently used first out past ``max_entries``, gone after ``ttl``."""

    def __init__(self, ttl: float, max_entries: int, clock: Clock = time.time) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            stored_at, sealed = found
            if self._clock() - stored_at >= self._ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return sealed

    def put(self, key: str, sealed: bytes) -> None:
        with self._lock:
            self._entries[key] = (self._clock(), sealed)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def remove(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class DirectoryStore:
    """One file per entry, named by its key digest, in a directory only its owner may read (0700, files 0600).

    Written atomically (a temporary file, then os.replace), so a reader sees a whole entry or none. An
    entry's time is its file's modification time (set from the clock when written): past the TTL it is
    a miss and the file is removed when next read. Past ``max_entries`` the directory is pruned (expired
    entries first, then the oldest) on a write, never on the caller's path.
    """

    def __init__(self, directory: Path, ttl: float, max_entries: int, clock: Clock = time.time) -> None:
        self.directory = directory
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._believed_count: int | None = None  # entries believed present; None: not counted yet

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            if self._clock() - path.stat().st_mtime >= self._ttl:
                _unlink(path)
                return None
            return path.read_bytes()
        except OSError:  # absent, or not ours to read: a miss
            return None

    def put(self, key: str, sealed: bytes) -> None:
        path = self._path(key)
        self._ensure_directory()
        temporary = self.directory / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(sealed)
            now = self._clock()
            os.utime(temporary, (now, now))
            os.replace(temporary, path)
        except BaseException:
            _unlink(temporary)
            raise
        self._count_write()

    def remove(self, key: str) -> None:
        _unlink(self._path(key))

    def clear(self) -> None:
        for path, _ in self._entries():
            _unlink(path)
        with self._lock:
            self._believed_count = 0

    def _path(self, key: str) -> Path:
        if not ENTRY_NAME.fullmatch(key):
            raise ValueError("an answer cache key is a 64-digit hex digest")
        return self.directory / key

    def _ensure_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is masked by the umask

    def _count_write(self) -> None:
        with self._lock:
            if self._believed_count is None:
                self._believed_count = sum(1 for _ in self._entries())
            else:
                self._believed_count += 1
            if self._believed_count <= self._max_entries:
                return
            self._believed_count = self._prune()

    def _prune(self) -> int:
        """Remove expired entries (and stale temporary files), then the oldest past PRUNE_TO; the count left."""
        now = self._clock()
        alive = []
        for path, mtime in self._entries(include_temporary=True):
            if now - mtime >= self._ttl:
                _unlink(path)
            elif ENTRY_NAME.fullmatch(path.name):
                alive.append((mtime, path))
        keep = max(1, int(self._max_entries * PRUNE_TO))
        alive.sort()
        for _, path in alive[: max(0, len(alive) - keep)]:
            _unlink(path)
        return min(len(alive), keep)

    def _entries(self, include_temporary: bool = False) -> list[tuple[Path, float]]:
        found = []
        with contextlib.suppress(OSError), os.scandir(self.directory) as listing:
            for item in listing:
                if ENTRY_NAME.fullmatch(item.name) or (include_temporary and _TEMPORARY.fullmatch(item.name)):
                    with contextlib.suppress(OSError):
                        found.append((Path(item.path), item.stat(follow_symlinks=False).st_mtime))
        return found


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
