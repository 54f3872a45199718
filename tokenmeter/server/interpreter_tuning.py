"""CPython settings for tokenmeter's servers, where an event loop answers checks in milliseconds
while other threads (the enforcer's refresh, the ingest queue) do seconds of Python work.

- The garbage collector: a started server holds a large heap of long-lived objects (modules,
  pydantic models, gRPC, chDB's bindings, the policy) that never become garbage, and every full
  (generation 2) collection walks all of it: passes of 150-200 ms were measured in serve under
  load, and no check is answered meanwhile. Freezing the heap once the server is ready moves
  those objects out of the collector's sight; what is created later (reservations, leases,
  requests) is collected as before. Measured in serve with Keeper leases at 1,000 checks/s: GC
  time per run 1.4-1.6 s -> 0.64-0.76 s, longest pass ~200 ms -> 61-79 ms.
- Thread switching: while a thread runs Python (the refresh scanning 10,000 leases), the event
  loop's thread gets the GIL back only after the switch interval (5 ms by default), and it gives
  it up again at every socket call: a loop serving 16 connections then stalls for tens of ms
  (53 ms measured). At 0.5 ms the same stall is bounded by a tenth of that per hand-over;
  the longest check at 1,000 checks/s with Keeper leases: 57-79 ms -> 21-41 ms over three runs
  each (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import sys
from typing import Final

SWITCH_INTERVAL_SECONDS: Final = 0.0005


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from later collections (call when ready)."""
    gc.collect()
    gc.freeze()


def favour_the_event_loop() -> None:
    """Hand the GIL between threads every 0.5 ms instead of 5 ms (the process serves checks)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def tune_when_ready() -> None:
    """Both of the above: call once the server is started, just before it says it is ready."""
    freeze_startup_heap()
    favour_the_event_loop()
