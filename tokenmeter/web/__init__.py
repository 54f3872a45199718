"""The dashboard page of `tokenmeter serve` (http://127.0.0.1:9400/), from the same panel definitions as
the Grafana dashboards."""

from urllib.parse import quote


def token_link(url: str, token: str) -> str:
    """The page's address handing it ``token`` in the fragment (never sent to a server; the page keeps it in
    the tab and removes it from the address)."""
    return f"{url}#token={quote(token, safe='')}"
