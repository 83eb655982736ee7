# Entry points: `make demo` (the main job on the packaged defaults, writes report.html), `make test` (lint, then
# the full suite, as CI), `make test-fast` (no real model, torch, browser or notebook), `make lint`,
# `make lab` (JupyterLab on the notebooks) and `make bench`. Each creates or reuses .venv and installs what it
# needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
LAB_PORT ?= 8888
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: demo test test-fast lint lab bench dashboard-peer circuit-tracer-peer install browser clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-lab: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[notebook]'
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test,bench,peers,notebook]'
	touch $@ $(VENV)/.installed-run $(VENV)/.installed-lab

install: $(VENV)/.installed-run

# Debian's chromium, for the browser tests (tests/browser); they are skipped without it unless
# INTERP_REQUIRE_BROWSER=1, as in CI.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$INTERP_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt) for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed: the browser tests will be skipped"; fi; }

demo: $(VENV)/.installed-run
	$(PY) -m interp demo --out report.html

LINTED := interp tests benchmarks
# The tiers are markers tests/conftest.py sets from what each test uses.
FAST := not slow and not torch and not browser and not notebook and not heavy

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check $(LINTED)

# Two worker processes, each test file kept in one of them (its module fixtures built once; tests/conftest.py spreads
# the notebooks one by one): compilation and Python overhead are single-threaded, so two processes use a 2-core
# machine better than one. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Two test workers share the cores: OpenBLAS's own threads (behind numpy's and JAX's linear algebra on a CPU) then
# spin against each other and slow every linear solve about tenfold, so each worker's OpenBLAS runs one thread.
test test-fast: export OPENBLAS_NUM_THREADS ?= 1

test: lint browser
	$(PY) -m pytest -q $(XDIST) tests

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q $(XDIST) tests -m "$(FAST)"

# JupyterLab on the notebooks, on 127.0.0.1 only; its news pop-up is switched off.
lab: $(VENV)/.installed-lab
	@mkdir -p $(VENV)/lab-settings/@jupyterlab/apputils-extension
	@printf '{"fetchNews": "false", "checkForUpdates": false}\n' \
	  > $(VENV)/lab-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings
	JUPYTERLAB_SETTINGS_DIR=$(VENV)/lab-settings $(PY) -m jupyter lab notebooks --ip=127.0.0.1 \
	  --port=$(LAB_PORT) --no-browser $(ROOT_FLAG)

bench: $(VENV)/.installed-test
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/sae_train.py
	$(PY) benchmarks/patching.py

# sae-dashboard, the peer of benchmarks/dashboards.py, in its own venv (it needs transformer-lens 2 and
# transformers < 4.57, which .venv's versions rule out).
DASH_VENV ?= .venv-dashboard

$(DASH_VENV)/.installed: benchmarks/peer_envs/dashboard.sh
	PYTHON=$(PYTHON) bash benchmarks/peer_envs/dashboard.sh $(DASH_VENV)

dashboard-peer: $(DASH_VENV)/.installed

# circuit-tracer, the peer of benchmarks/graph_vs_circuit_tracer.py, in its own venv (it needs nnsight 0.7 and
# transformers 4.57, which .venv's versions rule out).
CT_VENV ?= .venv-circuit-tracer

$(CT_VENV)/.installed: benchmarks/peer_envs/circuit_tracer.sh
	PYTHON=$(PYTHON) bash benchmarks/peer_envs/circuit_tracer.sh $(CT_VENV)

circuit-tracer-peer: $(CT_VENV)/.installed

clean:
	rm -rf $(VENV) $(DASH_VENV) $(CT_VENV) *.egg-info
