# The single entry point. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit system-deps bench clean

# Two installs into one venv: the demo needs the exporter and the simulator (a separate
# distribution in simulator/, never in the runtime wheel or image); the tests need the
# development tools too.
$(VENV)/.demo: pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e . -e ./simulator
	touch $@

$(VENV)/.dev: pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./simulator
	touch $@ $(VENV)/.demo

## Run the exporter against its simulated tenant on http://127.0.0.1:9869/
demo: $(VENV)/.demo
	$(BIN)/pki-exporter --demo

## Everything CI runs: system packages (as root), lint, types, the whole test suite.
test: system-deps $(VENV)/.dev lint typecheck unit

system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict pki_exporter simulator/pki_simulator

unit: $(VENV)/.dev
	$(BIN)/pytest -ra

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info simulator/build simulator/*.egg-info .mypy_cache .ruff_cache .pytest_cache test-output
