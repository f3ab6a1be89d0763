# bookaudit: `make demo` plays the sample day end to end; `make test` runs the suite on the real stack.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STACK_DIR ?= .stack
PYTHON ?= python3
# Every target that talks to services runs with the stack's BOOKAUDIT_* exports.
WITH_STACK = eval "$$($(BIN)/bookaudit stack env --dir $(STACK_DIR))" &&

.PHONY: venv stack-up stack-down demo lint test unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

stack-up: venv
	$(BIN)/bookaudit stack up --dir $(STACK_DIR) >/dev/null

stack-down: venv
	$(BIN)/bookaudit stack down --dir $(STACK_DIR)

demo: stack-up
	$(WITH_STACK) $(BIN)/bookaudit demo run

lint: venv
	$(BIN)/ruff check bookaudit tests bench
	$(BIN)/ruff format --check bookaudit tests bench
	$(BIN)/mypy bookaudit tests bench

unit: venv
	$(BIN)/pytest -m "not integration"

test: lint stack-up
	$(WITH_STACK) BOOKAUDIT_STACK_DIR=$(STACK_DIR) $(BIN)/pytest

bench: stack-up
	$(WITH_STACK) $(BIN)/python -m bench.capture
	$(WITH_STACK) $(BIN)/python -m bench.trigger_mode
	$(WITH_STACK) $(BIN)/python -m bench.alerts

clean: stack-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
