"""Where a running `tokenmeter serve` answers, recorded beside the lock of the chDB directory it holds.

chDB allows one process per directory, so commands that read the store (`tokenmeter report`,
`check`) ask the serve holding it instead; this record tells them its API's address, whatever
port it was given. serve writes it once it listens and removes it when it stops. A record
is trusted only while its process is alive and holds the directory's lock: one left by a
killed serve is ignored.

    {"pid": 1234, "api": "http://127.0.0.1:9400", "store": "chdb:///…", "api_token_file": "/…/api-token"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tokenmeter.store.client import holder_pid, lock_holder

logger = logging.getLogger(__name__)

RECORD_NAME: Final = "tokenmeter-serve.json"
# A serve listening on every address is asked on loopback.
_LOOPBACK_FOR_WILDCARD: Final = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}  # noqa: S104 - mapped away


@dataclass(frozen=True)
class ServeRecord:
    """A serve's address as it recorded it: its PID, API base URL, store and API token file (None: set in env)."""

    pid: int
    api: str
    store: str
    api_token_file: Path | None = None

    def to_json(self) -> str:
        token_file = str(self.api_token_file) if self.api_token_file else None
        return json.dumps({"pid": self.pid, "api": self.api, "store": self.store, "api_token_file": token_file})

    @classmethod
    def from_json(cls, text: str) -> ServeRecord:
        """ValueError when ``text`` is not a record."""
        document: Any = json.loads(text)
        if not isinstance(document, dict) or not isinstance(document.get("pid"), int):
            raise ValueError("not a serve address record")
        api, store, token_file = document.get("api"), document.get("store"), document.get("api_token_file")
        if not isinstance(api, str) or not api.startswith(("http://", "https://")) or not isinstance(store, str):
            raise ValueError("not a serve address record")
        return cls(document["pid"], api, store, Path(token_file) if isinstance(token_file, str) else None)


def client_url(bound: str) -> str:
    """The URL a client on this machine uses for a bound ``http://host:port`` (a wildcard host becomes loopback)."""
    parts = urlsplit(bound)
    host = parts.netloc.rsplit(":", 1)[0]
    if host not in _LOOPBACK_FOR_WILDCARD:
        return bound
    return f"{parts.scheme}://{_LOOPBACK_FOR_WILDCARD[host]}:{parts.port}"


@contextlib.contextmanager
def recorded(chdb_dir: Path, record: ServeRecord) -> Iterator[Path]:
    """Write ``record`` beside the lock while the block runs; removed at its end (if it is still this one)."""
    path = chdb_dir / RECORD_NAME
    partial = path.with_name(f".{RECORD_NAME}.{record.pid}")
    try:
        partial.write_text(record.to_json() + "\n", encoding="utf-8")
        partial.chmod(0o644)  # readers refuse a record others could have written (whatever the umask)
        partial.replace(path)  # readers never see half a record
    except OSError as exc:  # serve runs on; `report` then asks TOKENMETER_API_URL, as without a record
        logger.warning("cannot record the API's address in %s: %s", path, exc.strerror)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if ServeRecord.from_json(path.read_text(encoding="utf-8")).pid == record.pid:
                path.unlink()


def live_serve(chdb_dir: Path) -> ServeRecord | None:
    """The record of the serve holding ``chdb_dir`` now; None when none is recorded, or it is stale.

    Stale: the recorded process is gone, or it is not the one holding the directory's lock.
    Not trusted either: a record that is not the lock holder's user's alone (it names a token
    file to read and a URL to send that token to). Call from a process that does not hold the
    directory itself.
    """
    path = chdb_dir / RECORD_NAME
    try:
        written_by_holder = _written_by_holder(path, chdb_dir / "status")
        record = ServeRecord.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not written_by_holder or lock_holder(chdb_dir) is None:
        return None
    if _holder_pid(chdb_dir) != record.pid or not _alive(record.pid):
        return None
    return record


def _written_by_holder(record: Path, status: Path) -> bool:
    """The record belongs to the user whose process holds ``status``, and nobody else may write it."""
    mode, owner = record.stat().st_mode, record.stat().st_uid
    return owner == status.stat().st_uid and not mode & (stat.S_IWGRP | stat.S_IWOTH)


def _holder_pid(chdb_dir: Path) -> int | None:
    digits = re.search(r"\d+", holder_pid(chdb_dir / "status"))
    return int(digits.group()) if digits else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
