# Two entry points, each making its own virtual environment from nothing but python3:
#   make bench   the chat benchmark on the file store and in memory (no server needed)
#   make test    lint, type checks and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_FLAGS := --disable-pip-version-check --quiet

.PHONY: bench test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(PIP_FLAGS) -e . --config-settings editable_mode=strict
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[all,dev]' --config-settings editable_mode=strict
	touch $@

bench: $(VENV)/.core
	$(BIN)/python benchmarks/chat.py
	$(BIN)/python benchmarks/plot.py

lint: $(VENV)/.dev
	$(BIN)/ruff check savers adapters tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy -p savegame.savers -p savegame.adapters

test: lint typecheck
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
