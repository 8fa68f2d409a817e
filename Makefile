# The single entry point. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit e2e system fuzz system-deps bench clean image lock dist dashboard

# Two installs into one venv: the demo needs the exporter and the simulator (a separate
# distribution in simulator/, never in the runtime wheel or image); the tests need the
# development tools too. --no-compile: Python compiles what is imported, when it is first
# imported (pip compiling every installed module took a fifth of the install).
$(VENV)/.demo: pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e . -e ./simulator
	touch $@

$(VENV)/.dev: pyproject.toml simulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[dev]' -e ./simulator
	touch $@ $(VENV)/.demo

## Run the exporter against its simulated tenant on http://127.0.0.1:9869/
demo: $(VENV)/.demo
	$(BIN)/pki-exporter --demo

## Everything CI runs: system packages (as root), lint, types, and every test (unit, e2e and
## system) in one pytest session, the longest first (tests/kinds.py, LONG_FIRST)
test: system-deps $(VENV)/.dev lint typecheck
	$(PYTEST) -m "unit or e2e or system" -n $(TEST_WORKERS)

system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict pki_exporter simulator/pki_simulator
	$(BIN)/mypy --strict grafana/dashboard.py

# The tests by kind (tests/kinds.py says which test is which; README, "Development").
# pytest-xdist workers on 2 cores: most end-to-end and system tests wait more than they
# compute, so 8 workers; `make test` runs the three kinds in one session, in the order of
# tests/kinds.py (the longest first; --no-loadscope-reorder keeps xdist from re-sorting
# them by group size). No test selected is a failure (pytest's exit code 5), never a
# silent pass. Bytecode is cached (PYTHONDONTWRITEBYTECODE would make pytest rewrite every
# test module's asserts again in each worker, each run).
PYTEST         := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -ra --dist loadgroup --no-loadscope-reorder
UNIT_WORKERS   ?= 4
E2E_WORKERS    ?= 8
SYSTEM_WORKERS ?= 8
TEST_WORKERS   ?= 8

## In-process tests: seconds
unit: $(VENV)/.dev
	$(PYTEST) -m unit -n $(UNIT_WORKERS)

## The property-based tests alone, at their full example counts (tests/fuzzing.py)
fuzz: $(VENV)/.dev
	PKI_EXPORTER_FUZZ=$${PKI_EXPORTER_FUZZ:-deep} $(PYTEST) -n $(UNIT_WORKERS) tests/test_*_fuzz.py

## Real exporter and simulator processes over loopback
e2e: $(VENV)/.dev
	$(PYTEST) -m e2e -n $(E2E_WORKERS)

## The image, the wheel, Chromium, promtool, Prometheus + Alertmanager, the soak
## (PKI_EXPORTER_SOAK_SECONDS, 60 by default)
system: system-deps $(VENV)/.dev
	$(PYTEST) -m system -n $(SYSTEM_WORKERS)

bench: $(VENV)/.dev
	bash scripts/install-system-deps.sh bench
	$(BIN)/python -m bench

## The container image (docker, else podman): make image [IMAGE=pki-exporter:0.1.0]
CONTAINER ?= $(shell command -v docker || command -v podman)
VERSION   := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' pki_exporter/__init__.py)
IMAGE     ?= pki-exporter:$(VERSION)
# podman: keep the HEALTHCHECK (docker format); no layer cache (podman 4.3 mounts a stale
# `--mount from=build` when that stage is cached)
PODMAN_BUILD = $(if $(findstring podman,$(CONTAINER)),--format docker --layers=false)
image:
	$(CONTAINER) build $(PODMAN_BUILD) --tag $(IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD) --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) .

## requirements.lock (the image's pinned, hashed dependencies) from pyproject.toml
lock: $(VENV)/.dev
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile \
	  --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --index-url https://pypi.org/simple \
	  --output-file requirements.lock pyproject.toml

## The wheel and the sdist in dist/, checked by twine
dist: $(VENV)/.dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

## grafana/pki-exporter.json from grafana/dashboard.py, then the Kubernetes ConfigMap from it
dashboard: $(VENV)/.dev
	$(BIN)/python grafana/dashboard.py
	$(BIN)/python scripts/generate_kubernetes_monitoring.py

clean:
	rm -rf $(VENV) build dist *.egg-info simulator/build simulator/*.egg-info .mypy_cache .ruff_cache .pytest_cache test-output
