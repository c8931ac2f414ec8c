# One task runner for people and CI. Every target installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
# The uv that `make lock` compiles the lock files with; `make lock-check` fails on a lock made
# with another one, or from another pyproject.toml.
UV_VERSION := 0.13.9
LOCKS := requirements.lock requirements-dev.lock

.PHONY: help venv packages lint format test test-unit env-start env-stop lock lock-check clean \
	demo bench bench-steady

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

test: lock-check lint packages
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

# Regenerates the lock files from pyproject.toml (needs PyPI), keeping the versions they pin
# unless pyproject.toml rules them out; `make lock UV_ARGS=--upgrade` moves to the newest.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet uv==$(UV_VERSION)
	.lock-venv/bin/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -q $(UV_ARGS) -o requirements.lock
	.lock-venv/bin/uv pip compile pyproject.toml --group dev --python-version 3.11 --generate-hashes -q $(UV_ARGS) -o requirements-dev.lock
	$(PYTHON) .ci/lock_inputs.py stamp --uv $(UV_VERSION) $(LOCKS)
	rm -rf .lock-venv

# Offline: the lock files were made by `make lock` from this pyproject.toml with this uv.
lock-check:
	$(PYTHON) .ci/lock_inputs.py check --uv $(UV_VERSION) $(LOCKS)

clean:
	rm -rf $(VENV) .localenv .pytest_cache .mypy_cache .ruff_cache
