# The single entry point. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit system-deps bench clean

$(BIN)/pki-exporter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Run the exporter against its embedded simulated tenant on http://127.0.0.1:9869/
demo: $(BIN)/pki-exporter
	$(BIN)/pki-exporter --demo

## Everything CI runs: system packages (as root), lint, types, the whole test suite.
test: system-deps $(BIN)/pki-exporter lint typecheck unit

system-deps:
	bash scripts/install-system-deps.sh

lint: $(BIN)/pki-exporter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/pki-exporter
	$(BIN)/mypy --strict pki_exporter

unit: $(BIN)/pki-exporter
	$(BIN)/pytest -ra

bench: $(BIN)/pki-exporter
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache test-output
