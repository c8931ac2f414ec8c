# One task runner for people and CI. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: help venv packages lint format test test-unit env-start env-stop lock clean demo bench \
	bench-steady

help:
	@echo "make demo       run mailsyncd end to end on the local stand-in environment (SQLite)"
	@echo "make test       lint and run the whole suite (installs everything it needs)"
	@echo "make lint       ruff, ruff format --check, mypy strict"
	@echo "make bench      time the daemon's initial sync into PostgreSQL vs a bare FETCH loop"
	@echo "make bench-steady  steady state: 2,000 mailboxes at 12 s, polls/s, delay, CPU, RSS"
	@echo "make env-start  start the local stand-in environment in .localenv/ (env-stop stops it)"

$(STAMP): requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

packages:
	@bash deploy/local/ensure-packages.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint packages
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

test-unit: venv
	$(BIN)/pytest tests/unit

demo: venv packages
	PYTHONPATH=deploy/local $(BIN)/python deploy/local/demo.py

bench: venv packages
	PYTHONPATH=deploy/local $(BIN)/python deploy/local/bench.py $(BENCH_ARGS)

bench-steady: venv packages
	PYTHONPATH=deploy/local $(BIN)/python deploy/local/bench_steady.py $(STEADY_ARGS)

env-start: venv packages
	PYTHONPATH=deploy/local $(BIN)/python -m localenv start --dir .localenv

env-stop: venv
	PYTHONPATH=deploy/local $(BIN)/python -m localenv stop --dir .localenv

# Regenerates the lock files from pyproject.toml (needs the network to PyPI).
lock:
	$(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet uv
	.lock-venv/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -q -o requirements.lock
	.lock-venv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -q -o requirements-dev.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .localenv .pytest_cache .mypy_cache .ruff_cache
