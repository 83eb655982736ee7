# Two entry points: `make demo` (the main job on the packaged defaults) and `make test`.
# Each creates or reuses .venv and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test,bench,peers]'
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(PY) -m interp demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed-test
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/sae_train.py
	$(PY) benchmarks/patching.py

clean:
	rm -rf $(VENV) *.egg-info
