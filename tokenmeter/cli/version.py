"""`tokenmeter --version`: the version of the installed distribution that holds the ``tokenmeter`` package.

The distribution is looked up by the package it installs, not by its name, which is not the
command's (``tokenmeter-otel`` on PyPI). Run from a source tree without installing, it is the
package's own ``__version__``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def installed_version() -> str:
    """ "0.1.0 (installed as tokenmeter-otel)", or "0.1.0 (not installed: …)" from ``tokenmeter.__version__``."""
    from importlib import metadata

    for distribution in dict.fromkeys(metadata.packages_distributions().get("tokenmeter", [])):
        try:
            return f"{metadata.version(distribution)} (installed as {distribution})"
        except metadata.PackageNotFoundError:
            continue
    import tokenmeter

    return f"{tokenmeter.__version__} (not installed: the package's own version)"


class VersionAction(argparse.Action):
    """Like argparse's "version" action, but reads the version only when asked (the lookup scans every
    installed distribution, which no other command should pay for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        sys.stdout.write(f"{parser.prog} {installed_version()}\n")
        parser.exit()
