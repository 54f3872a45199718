"""Exit codes of every ``tokenmeter`` subcommand."""

from typing import Final

EXIT_OK: Final = 0
# The store or a service could not be used: unreachable, locked by another process, a failed or
# changed migration, an enforcer that did not answer.
EXIT_UNAVAILABLE: Final = 1
# Bad input: an unreadable file, invalid JSON or messages, a broken catalog or policy, bad arguments.
EXIT_BAD_INPUT: Final = 2
# A check that ran and found a problem: `tokenmeter reconcile` with a month total past its threshold.
EXIT_PAST_THRESHOLD: Final = 3
