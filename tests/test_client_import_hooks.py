"""The other clients are patched when the app imports them, and metered without the openai SDK installed.

Each case runs in a fresh interpreter (in this one the clients are long imported): `tokenmeter.instrument()`, as
an app calls it, with in-memory telemetry; the child reports what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ollama_server import EVAL_COUNT, OllamaServer

from tokenmeter import semconv

SUPPORT = Path(__file__).parent / "support"

_CHILD = """
import json, sys
import opentelemetry.instrumentation.dependencies as dependencies
from telemetry_fixtures import make_telemetry
import tokenmeter
from tokenmeter.settings import Settings

if "--without-openai" in sys.argv:  # the dependency check sees no openai distribution, as in an app without it
    installed = dependencies.version
    def version(name):
        if name == "openai":
            raise dependencies.PackageNotFoundError(name)
        return installed(name)
    dependencies.version = version

telemetry = make_telemetry()
tokenmeter.instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider,
                      settings=Settings(hash_key="test-hash-key"))
imported_at_instrument = "ollama" in sys.modules
import ollama
with tokenmeter.attribution(user="late-importer"):
    ollama.Client(host=sys.argv[1]).chat("qwen2.5:7b", [{"role": "user", "content": "hi"}])
    ollama.chat("qwen2.5:7b", [{"role": "user", "content": "hi again"}], options={"num_predict": 3})
from tokenmeter.instrumentation.instrumentor import TokenmeterInstrumentor
assert TokenmeterInstrumentor().flush()
spans = [dict(span.attributes) for span in telemetry.spans()]
print(json.dumps({"imported_at_instrument": imported_at_instrument, "spans": spans}))
"""


def _run_child(server: OllamaServer, *flags: str) -> dict[str, object]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])}
    environment = {k: v for k, v in environment.items() if not k.startswith(("TOKENMETER_", "OTEL_"))}
    environment["OLLAMA_HOST"] = server.host  # the module-level functions' default client
    done = subprocess.run([sys.executable, "-c", _CHILD, server.host, *flags], capture_output=True, text=True,
                          timeout=120, env=environment, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_client_imported_after_instrument_is_metered_and_not_imported_by_it() -> None:
    with OllamaServer() as server:
        seen = _run_child(server)
    assert seen["imported_at_instrument"] is False
    spans = seen["spans"]
    assert [span[semconv.GEN_AI_PROVIDER_NAME] for span in spans] == [semconv.PROVIDER_OLLAMA] * 2  # type: ignore[index]
    assert [span[semconv.ENDUSER_ID] for span in spans] == ["late-importer"] * 2  # type: ignore[index]
    # the module-level ollama.chat is the default client's method, rebound when the package was patched
    assert [span[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] for span in spans] == [EVAL_COUNT, 3]  # type: ignore[index]


def test_an_app_without_the_openai_sdk_is_metered_by_instrument() -> None:
    """`tokenmeter.instrument()` checks the instrumentor's declared dependencies: it declares none, so an app that
    calls only Ollama is metered (a declared ``openai`` would have left it unmetered, with a log line)."""
    with OllamaServer() as server:
        seen = _run_child(server, "--without-openai")
    assert len(seen["spans"]) == 2  # type: ignore[arg-type]
