"""The rich console the command line prints through.

On a terminal it is rich's own: the terminal's width, long lines wrapped. Anywhere else (a pipe,
a file, a CI log) rich would wrap at 80 columns and split the commands and links it prints,
which a user copies whole; there the console is wider than any line the command line prints,
so no line is broken, and a table takes the width its cells need (nothing cut to "…").
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from rich.console import Console

WIDTH_NOT_A_TERMINAL: Final = 10_000


def output_console(file: TextIO | None = None, **options: Any) -> Console:
    """A Console on ``file`` (default stdout); ``options`` go to rich's Console (e.g. ``highlight=False``)."""
    from rich.console import Console

    stream = file if file is not None else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else WIDTH_NOT_A_TERMINAL, **options)
