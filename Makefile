# Two commands do everything on a fresh machine: `make train` and `make test`.
# Both create .venv and install the project on first use; afterwards setup is a no-op.
PYTHON ?= python3
VENV ?= .venv
DATA ?= cifar10
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnkit-installed

.PHONY: setup train test lint format benchmark browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing cnnkit and its pinned dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

train: setup
	@$(BIN)/cnnkit train --data $(DATA) $(ARGS)

test: setup lint browser
	@$(BIN)/python -m pytest -q

# The service's browser test drives Debian's chromium package (Playwright downloads no browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing chromium (Debian package) for the browser test ..."; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "warning: could not install chromium: the browser test will be skipped"; \
	  else echo "chromium is missing and apt-get needs root: the browser test will be skipped"; fi; }

lint: setup
	@$(BIN)/ruff check --quiet src tests benchmarks
	@$(BIN)/ruff format --check --quiet src tests benchmarks

format: setup
	@$(BIN)/ruff check --fix --quiet src tests benchmarks
	@$(BIN)/ruff format --quiet src tests benchmarks

benchmark: setup
	@$(BIN)/python benchmarks/tutorial_protocol.py
