# Two commands do everything on a fresh machine: `make train` and `make test`.
# Both create .venv and install the project on first use; afterwards setup is a no-op.
PYTHON ?= python3
VENV ?= .venv
DATA ?= cifar10
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnkit-installed

.PHONY: setup train test lint format benchmark

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing cnnkit and its pinned dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

train: setup
	@$(BIN)/cnnkit train --data $(DATA) $(ARGS)

test: setup lint
	@$(BIN)/python -m pytest -q

lint: setup
	@$(BIN)/ruff check --quiet src tests benchmarks
	@$(BIN)/ruff format --check --quiet src tests benchmarks

format: setup
	@$(BIN)/ruff check --fix --quiet src tests benchmarks
	@$(BIN)/ruff format --quiet src tests benchmarks

benchmark: setup
	@$(BIN)/python benchmarks/tutorial_protocol.py
