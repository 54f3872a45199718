"""The dashboard page of `tokenmeter serve` (http://127.0.0.1:9400/), from the same panel definitions as
the Grafana dashboards."""

from urllib.parse import quote


def token_link(url: str, token: str, view: str = "") -> str:
    """The page's address handing it ``token`` in the fragment (never sent to a server; the page keeps it in
    the tab and removes it from the address), after the view's own fragment parameters (``range=30d``)."""
    return f"{url}#{f'{view}&' if view else ''}token={quote(token, safe='')}"
