# Newcomer commands: `make demo` (the whole pipeline on the embedded store, with
# simulated users) and `make test` (set up and pass the tests). Both create .venv when
# it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The instrumentation is also tested against the openai 1.x line that
# Langchain-Chatchat 0.3.1.3 resolves (langchain-openai 0.0.6 needs openai>=1.10,<2;
# Chatchat runs with httpx 0.27), in a venv of its own.
OPENAI1_VENV ?= .venv-openai1
OPENAI1_SPEC ?= openai==1.109.1 httpx==0.27.2
# (only what the instrumentation tests need: no store extra, no chDB)
# Langchain-Chatchat itself, for the integration test (its pins conflict with ours).
CHATCHAT_VENV ?= .venv-chatchat
CHATCHAT_SPEC ?= langchain-chatchat==0.3.1.3 httpx==0.27.2
# Peer OpenAI-SDK instrumentations for bench/peers_overhead.py (official OTel openai-v2, OpenLIT,
# OpenLLMetry), in a venv of their own. OpenLIT 1.45 needs openai<3, so the SDK here is the
# newest 2.x that every peer accepts (.venv has 3.x). openai-v2 2.4b0 asks for any
# opentelemetry-util-genai>=0.4b0, but 1.2b0 and later lack the module it imports.
PEERS_PYTHON ?= python3.11
PEERS_VENV ?= .venv-peers
PEERS_SPEC ?= openai==2.54.0 opentelemetry-instrumentation-openai-v2==2.4b0 opentelemetry-util-genai==1.1b0 \
	openlit==1.45.0 traceloop-sdk==0.62.4

.PHONY: test lint pytest test-openai1 test-chatchat bench demo dashboard screenshot cjk-font dist clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(OPENAI1_VENV)/.installed: pyproject.toml
	test -x $(OPENAI1_VENV)/bin/python || $(PYTHON) -m venv $(OPENAI1_VENV)
	$(OPENAI1_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OPENAI1_VENV)/bin/python -m pip install --quiet -e '.[tokenizers-offline,hf,jwt,otlp,answer-cache]' \
		pytest pytest-asyncio hypothesis $(OPENAI1_SPEC)
	touch $@

$(CHATCHAT_VENV)/.installed: pyproject.toml
	test -x $(CHATCHAT_VENV)/bin/python || $(PYTHON) -m venv $(CHATCHAT_VENV)
	$(CHATCHAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHATCHAT_VENV)/bin/python -m pip install --quiet $(CHATCHAT_SPEC)
	$(CHATCHAT_VENV)/bin/python -m pip install --quiet -e '.[otlp,tokenizers-offline,answer-cache]' \
		pytest pytest-asyncio hypothesis
	touch $@

$(PEERS_VENV)/.installed: pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PEERS_PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e '.[tokenizers-offline,otlp]' $(PEERS_SPEC)
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check tokenmeter tests bench dashboards
	$(BIN)/ruff format --check tokenmeter tests bench dashboards

pytest: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-openai1: $(OPENAI1_VENV)/.installed
	$(OPENAI1_VENV)/bin/python -c 'import openai; assert openai.__version__.startswith("1."), openai.__version__; print("openai", openai.__version__)'
	$(OPENAI1_VENV)/bin/python -m pytest -q tests/test_openai_instrumentation.py tests/test_auto_instrumentation.py \
		tests/test_quota_client.py tests/test_usage_flush.py tests/test_propagation.py \
		tests/test_answer_cache_store.py tests/test_answer_cache_openai.py tests/test_token_types.py \
		tests/test_openai_responses.py tests/test_openai_batch.py

test-chatchat: $(BIN)/.installed $(CHATCHAT_VENV)/.installed
	TOKENMETER_CHATCHAT_VENV=$(CURDIR)/$(CHATCHAT_VENV) $(BIN)/python -m pytest -q tests/test_chatchat_integration.py tests/test_chatchat_ratings.py \
		tests/test_chatchat_retrieval.py
	$(CHATCHAT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_langchain_callback.py \
		tests/test_answer_cache_openai.py tests/test_langchain_other_classes.py

test: lint pytest test-chatchat test-openai1

bench: $(BIN)/.installed
	$(BIN)/python bench/instrumentation_overhead.py
	$(BIN)/python bench/counting_throughput.py
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/ingest_insert_cost.py
	$(BIN)/python bench/counter_guard_cost.py
	$(BIN)/python bench/usage_query_latency.py
	$(BIN)/python bench/quota_decision_latency.py
	$(BIN)/python bench/quota_check_http.py
	$(BIN)/python bench/quota_check_inapp.py
	$(BIN)/python bench/dashboard_panels.py

# Added per-call latency of tokenmeter vs the peer instrumentations, side by side (a few minutes).
.PHONY: bench-peers
bench-peers: $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python bench/peers_overhead.py

demo: $(BIN)/.installed
	$(BIN)/tokenmeter demo

# The web dashboard on the last demo's data (http://127.0.0.1:9400/), until Ctrl-C.
dashboard: $(BIN)/.installed
	$(BIN)/tokenmeter demo --show

# README's picture: a fresh demo, then the dashboard in headless Chromium (apt-get install chromium).
screenshot: $(BIN)/.installed cjk-font
	$(BIN)/tokenmeter demo --no-dashboard --screenshot docs/images/dashboard.png

# Chromium draws the demo's department names (研发部, ...) as empty boxes without a CJK font.
cjk-font:
	@fc-list :lang=zh family | grep -q . || { echo "installing a CJK font: apt-get install fonts-wqy-microhei"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-wqy-microhei; }

# The wheel, dist/tokenmeter_otel-<version>-py3-none-any.whl (the distribution is `tokenmeter-otel`;
# the import and the command are `tokenmeter`): pip install --find-links dist 'tokenmeter-otel[server]'
dist: $(BIN)/.installed
	rm -rf build dist
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) $(OPENAI1_VENV) $(CHATCHAT_VENV) .pytest_cache .ruff_cache .tokenmeter-demo test-output
