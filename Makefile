# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv from nothing when it is missing, installs the package, then runs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test lint test-fast test-multinode venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(VENV)/bin/promptkd-ray demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check promptkd_ray tests benchmarks
	$(VENV)/bin/ruff check promptkd_ray tests benchmarks

test: lint
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-multinode: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m multinode tests/test_multinode.py

test-fast: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
