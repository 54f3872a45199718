"""Where a reading command's numbers come from: the store directly, or the `tokenmeter serve` that holds it.

chDB lets one process open a directory; while serve holds it, `statement` and `compare` ask serve's API
instead (at the address serve recorded beside the directory, else TOKENMETER_API_URL), and check that the
serve answering is the one holding that store. ``--api`` asks an API directly. Failures are
:class:`~tokenmeter.cli.report.ReportError` with the way out in the message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tokenmeter.cli.api_tokens import api_token, bearer_headers, refusal
from tokenmeter.cli.exit_codes import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from tokenmeter.cli.report import API_CONNECT_TIMEOUT_SECONDS, API_TIMEOUT_SECONDS, ReportError, ServeApi
from tokenmeter.cli.serve_lookup import serve_holding
from tokenmeter.settings import get_settings

if TYPE_CHECKING:
    import httpx
    from clickhouse_connect.driver.client import Client

    from tokenmeter.store.client import StoreLocation

T = TypeVar("T")


def read_store_or_serve(
    command: str,
    url: str | None,
    api: str | None,
    from_store: Callable[[Client, StoreLocation], T],
    from_api: Callable[[ServeApi], T],
) -> T:
    """``from_api`` on ``--api`` or the serve holding the chDB directory at ``url``; else ``from_store`` on it.

    The store is never created here: a reading command on a path with no store is bad input.
    """
    if api:
        return from_api(ServeApi(api))
    from tokenmeter.store import StoreLockedError, open_store, parse_store_url
    from tokenmeter.store.client import StoreConfigError, StoreError, StoreMissingError, lock_holder

    url = url or get_settings().clickhouse_url
    try:
        location = parse_store_url(url)
    except StoreConfigError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    # Ask the lock before chDB does: a refused open also prints chDB's own error on stderr.
    if location.kind == "chdb" and location.path is not None and lock_holder(location.path) is not None:
        return from_api(serve_api_for(command, location))
    try:
        client = open_store(url, create=False)
    except StoreLockedError:  # taken between the two looks
        return from_api(serve_api_for(command, location))
    except StoreMissingError as exc:
        raise ReportError(str(exc), EXIT_BAD_INPUT) from None
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        return from_store(client, location)
    finally:
        client.close()


def serve_api_for(command: str, location: StoreLocation) -> ServeApi:
    """The serve holding the chDB directory (at the address it recorded), else TOKENMETER_API_URL's."""
    record = serve_holding(location)
    if record is not None:
        _say(command, f"{location.display} is held by `tokenmeter serve` (PID {record.pid}); "
                      f"asking its API at {record.api}")  # fmt: skip
        return ServeApi(record.api, location, record.api_token_file)
    api = get_settings().api_url
    _say(command, f"{location.display} is held by another process that recorded no API address; asking {api}")
    return ServeApi(api, location)


def get_from_serve(api: ServeApi, path: str, params: Mapping[str, str]) -> httpx.Response:
    """serve's 200 answer to ``GET path``; else ReportError naming the way out (400: bad input)."""
    import httpx

    token = api_token(api.token_file)
    timeout = httpx.Timeout(API_TIMEOUT_SECONDS, connect=API_CONNECT_TIMEOUT_SECONDS)
    try:
        response = httpx.get(f"{api.url.rstrip('/')}{path}", params=dict(params), headers=bearer_headers(token),
                             timeout=timeout)  # fmt: skip
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise ReportError(f"cannot reach the serve API at {api.url} ({reason}); start `tokenmeter serve`, or "
                          "point --api / TOKENMETER_API_URL at the one running") from None  # fmt: skip
    if response.status_code == 401:
        raise ReportError(refusal(f"the serve API at {api.url}", token, "set TOKENMETER_API_TOKEN to serve's token"))
    if response.status_code != 200:
        code = EXIT_BAD_INPUT if response.status_code == 400 else EXIT_UNAVAILABLE
        raise ReportError(f"the serve API at {api.url} answered {response.status_code}: {_error(response)}", code)
    return response


def answered_by(api: ServeApi, store: str | None) -> str:
    """Who answered, for stderr, after checking the serve answers for the store asked about (when we know it)."""
    if api.held is not None and store and not _same_store(store, api.held):
        raise ReportError(f"the serve API at {api.url} answers for the store {store}, not for {api.held.display}; "
                          "point --api / TOKENMETER_API_URL at the serve holding it")  # fmt: skip
    return f"the serve API at {api.url}" + (f" (store {store})" if store else "")


def query_error_line(exc: Exception, location: StoreLocation) -> str:
    """The first line of a store's error, with the URL's password masked."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return first.replace(location.password, "***") if location.password else first


def _same_store(display: str, location: StoreLocation) -> bool:
    if location.kind == "chdb" and location.path is not None and display.startswith("chdb://"):
        return Path(display.removeprefix("chdb://")).resolve() == location.path.resolve()
    return display == location.display


def _error(response: Any) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:300]).strip()


def _say(command: str, line: str) -> None:
    sys.stderr.write(f"tokenmeter {command}: {line}\n")
    sys.stderr.flush()
