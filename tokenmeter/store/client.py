"""Turn ``TOKENMETER_CLICKHOUSE_URL`` into a clickhouse-connect client.

Two kinds of URL, one kind of client (the rest of the code does not know which):

- ``chdb:///abs/path``: the embedded engine (chDB) in this process, data under the path.
  chDB locks its directory: one process at a time. Commands that make the store (serve,
  db migrate) create the directory; commands that only read it refuse a path that does
  not exist (``open_store(url, create=False)``), rather than create an empty store there.
- ``http(s)://user:password@host:port/database``: a ClickHouse server.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote, urlsplit

from tokenmeter.errors import ConfigurationError, TokenmeterError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

URL_HELP: Final = "use chdb:///absolute/path or http(s)://user:password@host:port/database"
DEFAULT_HTTP_PORT: Final = 8123
DEFAULT_HTTPS_PORT: Final = 8443
# "[Errno 111] Connection refused", "[Errno -2] Name or service not known" inside the driver's text.
_SOCKET_ERROR: Final = re.compile(r"\[Errno -?\d+\] ([^\"')\]]+)")
_MASKABLE_PASSWORD: Final = 4


class StoreError(TokenmeterError):
    """The store cannot be opened or used; the message names the fix."""


class StoreConfigError(StoreError, ConfigurationError):
    """TOKENMETER_CLICKHOUSE_URL (or --clickhouse-url) is not a usable store URL."""


class StoreLockedError(StoreError):
    """Another process holds the chDB data directory."""


class StoreMissingError(StoreConfigError):
    """A chDB directory that does not exist, given to a command that only reads the store."""


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store URL. The password never appears in ``repr`` or ``display``."""

    kind: Literal["chdb", "http"]
    path: Path | None = None
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    database: str = "default"
    secure: bool = False

    @property
    def display(self) -> str:
        """The URL for logs and messages, password left out."""
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{self.database}"


def parse_store_url(url: str) -> StoreLocation:
    """Parse a store URL; raises StoreConfigError naming what is wrong."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        if parts.netloc:
            raise StoreConfigError(
                f"chdb URL {url!r} has a host part ({parts.netloc!r}); write three slashes: chdb:///absolute/path"
            )
        path = Path(unquote(parts.path))
        if not parts.path or not path.is_absolute():
            raise StoreConfigError(f"chdb URL {url!r} needs an absolute path, e.g. chdb:///var/lib/tokenmeter/chdb")
        return StoreLocation(kind="chdb", path=path)
    if scheme in {"http", "https"}:
        if not parts.hostname:
            raise StoreConfigError(f"store URL has no host; {URL_HELP}")
        secure = scheme == "https"
        try:
            port = parts.port or (DEFAULT_HTTPS_PORT if secure else DEFAULT_HTTP_PORT)
        except ValueError:
            raise StoreConfigError(f"store URL has a bad port; {URL_HELP}") from None
        database = unquote(parts.path.strip("/")) or "default"
        if "/" in database:
            raise StoreConfigError(f"store URL path must be one database name, got {database!r}; {URL_HELP}")
        return StoreLocation(
            kind="http",
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            database=database,
            secure=secure,
        )
    raise StoreConfigError(f"unsupported store URL scheme {parts.scheme!r}; {URL_HELP}")


def open_store(url: str | None = None, *, create: bool = True) -> Client:
    """Open the store at ``url`` (default: the TOKENMETER_CLICKHOUSE_URL setting).

    For chDB the directory is created, unless ``create`` is False (commands that only read):
    then a missing directory raises StoreMissingError. Raises StoreLockedError when another
    process holds a chDB directory, StoreConfigError for a bad URL, StoreError when the
    server is unreachable.
    """
    if url is None:
        from tokenmeter.settings import get_settings

        url = get_settings().clickhouse_url
    location = parse_store_url(url)
    if not create:
        require_existing_store(location)
    try:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError
    except ImportError:
        raise StoreError("the store needs clickhouse-connect and chDB: pip install 'tokenmeter-otel[store]'") from None
    logger.info("opening store %s", location.display)
    if location.kind == "chdb":
        assert location.path is not None
        return _open_chdb(clickhouse_connect, ClickHouseError, location.path)
    try:
        return clickhouse_connect.get_client(
            host=location.host,
            port=location.port,
            username=location.username,
            password=location.password,
            database=location.database,
            secure=location.secure,
        )
    except ClickHouseError as exc:
        reason = _driver_reason(str(exc), location)
        raise StoreError(f"cannot open ClickHouse at {location.display}: {reason}") from None


def _driver_reason(message: str, location: StoreLocation) -> str:
    """The cause in the driver's message (urllib3's "[Errno 111] Connection refused" inside its retry text),
    else the message with the password masked: the URL is shown already, the retry details are noise."""
    cause = _SOCKET_ERROR.search(message)
    if cause:
        return cause.group(1).strip()
    if location.password and len(location.password) >= _MASKABLE_PASSWORD:
        message = message.replace(location.password, "***")
    elif location.password:  # too short to mask in running text without mangling it: leave the text out
        return "the server could not be reached or refused the connection"
    return message


def require_existing_store(location: StoreLocation) -> None:
    """StoreMissingError when ``location`` is a chDB directory that does not exist (a server: nothing to check)."""
    if location.kind != "chdb" or location.path is None:
        return
    if location.path.is_dir():
        return
    what = "is not a directory" if location.path.exists() else "does not exist"
    raise StoreMissingError(
        f"no store at {location.display}: {location.path} {what}. Check the URL (--clickhouse-url or "
        f"TOKENMETER_CLICKHOUSE_URL), or create the store first: run `tokenmeter db migrate --clickhouse-url "
        f"{location.display}` (or `tokenmeter serve`, which migrates)"
    )


def probe_store(client: Client) -> None:
    """Raise unless the store answers a query that reads stored data.

    It reads the record of applied migrations (never empty once migrated): a store whose
    files are gone fails it, where metadata-only queries (``SELECT 1``, ``count()``) still answer.
    """
    from tokenmeter.store.migrations import MIGRATIONS_TABLE

    client.command(f"SELECT count() FROM {MIGRATIONS_TABLE} WHERE checksum != ''")  # noqa: S608 - a constant


def _open_chdb(clickhouse_connect: object, error_type: type[Exception], path: Path) -> Client:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreConfigError(
            f"cannot create the chDB directory {path}: {exc.strerror}; set TOKENMETER_CLICKHOUSE_URL to a writable path"
        ) from None
    try:
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")  # type: ignore[attr-defined, no-any-return]
    except error_type as exc:
        holder = lock_holder(path)
        if holder is not None or "Cannot lock file" in str(exc):
            raise StoreLockedError(
                f"another process{holder or ''} holds the chDB directory {path} (probably a running "
                "`tokenmeter serve`); chDB allows one process per directory. Use that process's HTTP API "
                "(e.g. `tokenmeter report` talks to it), or stop it and retry"
            ) from None
        raise StoreError(f"cannot open the chDB store at {path}: {exc}") from None


def lock_holder(path: Path) -> str | None:
    """If another process locks ``path``/status, a description such as " (PID 123)"; else None.

    Call only when this process does not hold the directory itself: flock locks held by
    another open of the same file in this process count as locked too.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder_pid(status) or " (PID unknown)"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder_pid(status: Path) -> str:
    """\" (PID 123)\" from a chDB ``status`` file, which the process holding it writes; "" if unreadable."""
    with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
        first = status.read_text(encoding="utf-8").splitlines()[0]
        if first.startswith("PID:"):
            return f" (PID {first.removeprefix('PID:').strip()})"
    return ""
