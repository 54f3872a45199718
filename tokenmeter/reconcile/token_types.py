"""The quantities a reconciliation compares, named as the prices' rates are (:mod:`tokenmeter.pricing`).

Parts are included in their totals, as in tokenmeter's own counts: ``input`` includes ``cached_input`` and
``cache_write``, ``output`` includes ``reasoning``. ``requests`` are calls; ``cost`` is money in the provider's
currency.
"""

from __future__ import annotations

from typing import Final

REQUESTS: Final = "requests"
INPUT: Final = "input"
CACHED_INPUT: Final = "cached_input"
CACHE_WRITE: Final = "cache_write"
OUTPUT: Final = "output"
REASONING: Final = "reasoning"
AUDIO_INPUT: Final = "audio_input"
AUDIO_OUTPUT: Final = "audio_output"
COST: Final = "cost"

# In the order reports print them.
TOKEN_TYPES: Final = (REQUESTS, INPUT, CACHED_INPUT, CACHE_WRITE, OUTPUT, REASONING, AUDIO_INPUT, AUDIO_OUTPUT)
COMPARED: Final = (*TOKEN_TYPES, COST)
