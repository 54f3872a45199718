"""The root of the errors tokenmeter raises on purpose, so a caller can catch all of them at once.

``ConfigurationError`` is the branch for what a user configured and must fix (a catalog or policy
file, a store URL): its message names the fix. Each error keeps the built-in base it had
(``ValueError`` for the files), so existing ``except`` clauses behave as before.
"""


class TokenmeterError(Exception):
    """An error tokenmeter raised on purpose; the message says what happened and what to do."""


class ConfigurationError(TokenmeterError):
    """Something configured cannot be used (a file, a setting, a URL); the message names the fix."""
