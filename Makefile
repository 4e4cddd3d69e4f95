# policyc — see README.md. Every target works as root (CI) and as an ordinary user.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all system-deps venv node-deps test lint typecheck unit demo extension bench clean

all: test

system-deps:
	@scripts/system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fast]'
	@touch $(STAMP)

venv: $(STAMP)

# node-postgres for tests/test_clients_other.py, from the committed lock file (never at test time).
NODE_DIR   := tests/clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

node-deps: $(NODE_STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# The whole suite against throwaway PostgreSQL clusters; .ci/run calls exactly this.
test: system-deps venv node-deps lint typecheck
	$(BIN)/pytest

# Only the fast tests (no database), for a quick loop while editing.
unit: venv
	$(BIN)/pytest -m 'not db'

# The clinic example end to end on a throwaway local cluster.
demo: system-deps venv
	$(BIN)/python examples/clinic/demo.py

# Install the runtime as a real extension into the local server (needs write access there).
extension: venv
	$(BIN)/policyc runtime render "$$(pg_config --sharedir)/extension"

bench: system-deps venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info engine/*.egg-info $(NODE_DIR)/node_modules
