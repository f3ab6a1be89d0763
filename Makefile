# bookaudit: `make demo` plays the sample day end to end; `make test` runs the suite on the real stack.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STACK_DIR ?= .stack
PYTHON ?= python3
# src/bookaudit links to the pipeline folders at the top: mypy follows the links (one package),
# ruff does not, so it is given the real folders.
MYPY_PATHS := src/bookaudit devstack tests bench
RUFF_PATHS := src/bookaudit cdc consumers schemas sql devstack tests bench
# Every target that talks to services runs with the stack's BOOKAUDIT_* exports.
WITH_STACK = eval "$$($(BIN)/python -m devstack env --dir $(STACK_DIR))" &&

.PHONY: deps venv stack-up stack-down demo lint test unit bench faults clean compile clean-compiled

# System packages (PostgreSQL, Java 17, Maven, Chromium): installed as root by the script CI uses,
# otherwise it prints the one command to run.
deps:
	.ci/install-deps

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# The capture's and the writer's hot paths compiled with mypyc (setup.py), in place: imports
# prefer them to the .py. Optional: without them the same code runs as Python (README, Benchmarks).
compile: venv clean-compiled
	BOOKAUDIT_MYPYC=1 $(BIN)/python setup.py --quiet build_ext --inplace

clean-compiled:
	rm -f src/*.so src/bookaudit/*.so src/bookaudit/*/*.so src/bookaudit/*/*/*.so src/bookaudit/_compiled.json

stack-up: venv
	$(BIN)/python -m devstack up --dir $(STACK_DIR) >/dev/null

stack-down: venv
	$(BIN)/python -m devstack down --dir $(STACK_DIR)

# The demo starts from empty bookings and audit databases, so it can be run again on one stack.
demo: deps stack-up
	$(BIN)/python -m devstack fresh-databases --dir $(STACK_DIR)
	$(WITH_STACK) $(BIN)/bookaudit demo run

lint: venv
	$(BIN)/ruff check $(RUFF_PATHS)
	$(BIN)/ruff format --check $(RUFF_PATHS)
	$(BIN)/mypy $(MYPY_PATHS)

unit: venv
	$(BIN)/pytest -m "not integration"

test: lint stack-up
	$(WITH_STACK) BOOKAUDIT_STACK_DIR=$(STACK_DIR) $(BIN)/pytest

bench: stack-up compile
	$(WITH_STACK) $(BIN)/python -m bench.capture
	$(WITH_STACK) $(BIN)/python -m bench.writer
	$(WITH_STACK) $(BIN)/python -m bench.trigger_mode
	$(WITH_STACK) $(BIN)/python -m bench.alerts

# The long fault campaign (>= 50 faults, >= 100k changes) on a stack of its own in .stack-faults:
# it restarts Kafka and PostgreSQL. `make test` runs the short form (tests/faults). SEED=n replays.
faults: venv
	$(BIN)/python -m tests.faults.campaign --long --dir .stack-faults $(if $(SEED),--seed $(SEED))

clean: stack-down clean-compiled
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
