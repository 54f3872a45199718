"""Find the `tokenmeter serve` that holds a chDB directory, from the address it records beside the lock.

`report` asks that serve's API instead of TOKENMETER_API_URL's, `check` asks it when no
enforcer URL is set, and `db migrate` and a second `serve` name it in their "held" error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tokenmeter.store.client import StoreConfigError, StoreLocation, StoreLockedError, lock_holder, parse_store_url

if TYPE_CHECKING:
    from tokenmeter.serve.api_address import ServeRecord


def serve_holding(location: StoreLocation) -> ServeRecord | None:
    """The live serve holding ``location``'s chDB directory, if it recorded its address; None otherwise."""
    if location.kind != "chdb" or location.path is None:
        return None
    from tokenmeter.serve.api_address import live_serve

    return live_serve(location.path)


def serve_holding_url(clickhouse_url: str) -> ServeRecord | None:
    """As :func:`serve_holding`, for a store URL; None for one that is not a valid URL."""
    try:
        return serve_holding(parse_store_url(clickhouse_url))
    except StoreConfigError:
        return None


@contextmanager
def naming_the_holder(location: StoreLocation) -> Iterator[None]:
    """For commands that open a chDB directory themselves (`db migrate`, `serve`): refuse a held one before
    chDB does (:func:`refuse_if_held`), and when another process takes it between that look and the open,
    say in the "held" error where the serve holding it answers, if it said."""
    refuse_if_held(location)
    try:
        yield
    except StoreLockedError as exc:
        record = serve_holding(location)
        hint = f"; it is `tokenmeter serve` with its API at {record.api}" if record is not None else ""
        raise StoreLockedError(f"{exc}{hint}") from None


def refuse_if_held(location: StoreLocation) -> None:
    """StoreLockedError, naming the holder and the serve API to use, when another process holds a chDB directory.

    Asked before chDB opens the directory, which would print its own lock error on stderr first.
    """
    if location.kind != "chdb" or location.path is None:
        return
    holder = lock_holder(location.path)
    if holder is None:
        return
    record = serve_holding(location)
    who = (
        f"`tokenmeter serve` (PID {record.pid}, API {record.api}: `tokenmeter report` and `check` use it)"
        if record is not None
        else f"another process{holder} (probably a running `tokenmeter serve`)"
    )
    raise StoreLockedError(
        f"{who} holds the chDB directory {location.path}, and chDB allows one process per directory; stop it and retry"
    )
