"""The command line's bad-input error: `main` prints its message and exits with EXIT_BAD_INPUT."""

from __future__ import annotations

from tokenmeter.errors import TokenmeterError


class InputError(TokenmeterError):
    """Bad input from the command line; the message names the problem."""
