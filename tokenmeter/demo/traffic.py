"""`tokenmeter demo-traffic`: the demo's simulated users against a deployment (docker-compose).

The same users, questions and local LLM server as `tokenmeter demo`, but sending to a
collector and an enforcer given by URL, round after round (``--rounds 0``: until stopped),
one line per round. For seeing dashboards and alerts move; not a load test.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter

from tokenmeter.demo.llm_server import DemoLLMServer
from tokenmeter.demo.run import SILENT_MODELS, Endpoints, instrumented, run_workload
from tokenmeter.demo.workload import plan


def run_traffic(endpoints: Endpoints, rounds: int, scale: float, pause_seconds: float = 5.0) -> int:
    from tokenmeter.catalog import ModelCatalog
    from tokenmeter.tokenizers import TokenizerRegistry

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    llm = DemoLLMServer(TokenizerRegistry(ModelCatalog.load(None)), SILENT_MODELS).start()
    totals: Counter[str] = Counter()
    try:
        with instrumented(endpoints, hash_key=f"demo-traffic-{os.getpid()}", export_interval_ms=5000):
            number = 0
            while not stop.is_set() and (rounds == 0 or number < rounds):
                number += 1
                started = time.monotonic()
                outcomes = run_workload(llm.base_url, plan(seed=number, scale=scale), None)
                totals.update(outcomes)
                sys.stderr.write(f"round {number}: {dict(outcomes)} in {time.monotonic() - started:.0f} s; "
                                 f"so far {dict(totals)}\n")  # fmt: skip
                sys.stderr.flush()
                if rounds == 0 or number < rounds:
                    stop.wait(pause_seconds)
    finally:
        llm.stop()
    return 0
