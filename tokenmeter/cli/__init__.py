"""The ``tokenmeter`` command line: every subcommand's arguments and its exit code.

``main`` is the console script (``tokenmeter = "tokenmeter.cli:main"``); ``python -m tokenmeter.cli``
runs the same. The subcommands' work lives in their parts (serve, enforcer, store, reporting, demo);
here are only the parsers and the mapping of errors to exit codes (:mod:`tokenmeter.cli.exit_codes`).
"""

from tokenmeter.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
