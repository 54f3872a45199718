"""Reading the policy file while someone may be writing it.

A file rewritten in place (an editor, ``cat >``, ``cp``) is empty, then partly written,
for a moment; read then, it would decide checks with fewer budgets than meant. So a
changed file is read only when it is settled:

- its (inode, size, mtime) have not changed for ``settle_seconds``: by its mtime (every
  write sets it) or, when the mtime is in the future (a skewed clock), as watched here;
- or it is a different file than last time (new inode): a file renamed into place, which
  was complete when it got its name (write a temporary file, then rename: the safe way);
- or a reload was asked for (SIGHUP: the operator says the file is ready);

and then two reads must agree with each other and with the file's size, the stat unchanged
around them. An empty file is refused by :func:`~tokenmeter.enforcer.policy.parse_policy`.

What is left: a writer that stops in the middle of the file for longer than the settle
time, or deletes the file and writes a new one in several steps, can still be read half
way; so can a file whose mtime is set into the past while it is being written.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from tokenmeter.enforcer.policy import Policy, PolicyError, parse_policy

DEFAULT_POLICY_SETTLE_SECONDS: Final = 2.0
# At start there is no previous policy to keep: wait for a file being written, this long at most.
START_WAIT_SETTLES: Final = 5
_START_POLL_SECONDS: Final = 0.05


@dataclass(frozen=True)
class FileState:
    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str | None
    checksum: str | None
    loaded_at: datetime
    file_state: FileState | None  # as read


def file_state(path: Path) -> FileState | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return FileState(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def no_policy() -> LoadedPolicy:
    """No policy file: no budgets, every check is allowed."""
    return LoadedPolicy(Policy(), None, None, datetime.now(UTC), None)


class _ChangedWhileReadError(Exception):
    """The file changed while it was being read."""


def _read_agreeing(path: Path, state: FileState) -> bytes:
    """The file's bytes, read twice; _ChangedWhileReadError unless both reads and the stats around them agree."""
    try:
        first = path.read_bytes()
        between = file_state(path)
        second = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    if not (state == between == file_state(path) and first == second and len(first) == state.size):
        raise _ChangedWhileReadError
    return first


def _parse(path: Path, data: bytes, state: FileState) -> LoadedPolicy:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: the policy file is not UTF-8 text (byte {exc.start})") from None
    policy = parse_policy(text, str(path), base_dir=path.parent)  # routing.classifier is beside the file
    return LoadedPolicy(policy, str(path), hashlib.sha256(data).hexdigest(), datetime.now(UTC), state)


def _missing(path: Path) -> PolicyError:
    return PolicyError(f"{path}: cannot read the policy file: it does not exist")


def read_policy_at_start(path: Path, settle_seconds: float = DEFAULT_POLICY_SETTLE_SECONDS) -> LoadedPolicy:
    """The policy to start with; a file written moments ago is waited for until it is settled.

    Raises PolicyError when it cannot be used (there is nothing to fall back to).
    """
    if file_state(path) is None:
        raise _missing(path)
    watch = PolicyFileWatch(path, settle_seconds, None)
    longest = START_WAIT_SETTLES * max(settle_seconds, _START_POLL_SECONDS)
    deadline = time.monotonic() + longest
    while True:
        result = watch.poll()
        if isinstance(result, LoadedPolicy):
            return result
        if isinstance(result, PolicyError):
            raise result
        if time.monotonic() >= deadline:
            raise PolicyError(f"{path}: the policy file kept changing for {longest:.0f} s; write a temporary "
                              "file and rename it over the policy file")  # fmt: skip
        time.sleep(_START_POLL_SECONDS)


class PolicyFileWatch:
    """Decides when a changed policy file is read, and reads it (see the module's docstring).

    ``poll()`` answers None (nothing to load yet), a LoadedPolicy, or a PolicyError (the
    settled file is broken); a state that was loaded or refused is not read again until the
    file changes or a reload is forced.
    """

    def __init__(
        self,
        path: Path,
        settle_seconds: float,
        taken: FileState | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self.settle_seconds = settle_seconds
        self._taken = taken  # the state last loaded or refused
        self._clock = clock
        self._wall_ns = wall_ns
        self._watching = False  # a change is seen and not yet taken
        self._pending: FileState | None = None  # the changed state (None: the file is gone)
        self._pending_since = 0.0  # when this process first saw it

    def poll(self, force: bool = False) -> LoadedPolicy | PolicyError | None:
        state = file_state(self.path)
        if state == self._taken and not force:
            self._watching = False  # changed and changed back, or nothing happened
            return None
        if not self._watching or state != self._pending:
            self._watching, self._pending, self._pending_since = True, state, self._clock()
        if not force and not self._settled(state):
            return None
        if state is None:
            loaded: LoadedPolicy | PolicyError = _missing(self.path)
        else:
            try:
                loaded = _parse(self.path, _read_agreeing(self.path, state), state)
            except _ChangedWhileReadError:
                self._watching = False  # being written right now: watch its next state
                return None
            except PolicyError as exc:
                loaded = exc
        self._taken, self._watching = state, False
        return loaded

    def seconds_until_due(self) -> float | None:
        """How long until a change seen but not yet taken is settled; None when nothing waits."""
        if not self._watching:
            return None
        waited = self._clock() - self._pending_since
        if self._pending is not None:
            waited = max(waited, (self._wall_ns() - self._pending.mtime_ns) / 1e9)
        return max(0.0, self.settle_seconds - waited)

    def _settled(self, state: FileState | None) -> bool:
        if self._clock() - self._pending_since >= self.settle_seconds:
            return True  # unchanged while watched
        if state is None:
            return False  # gone, perhaps for a moment (deleted, a new file to come)
        if self._taken is not None and state.inode != self._taken.inode:
            return True  # another file renamed into place: complete when it got its name
        return (self._wall_ns() - state.mtime_ns) / 1e9 >= self.settle_seconds
