# The single entry point. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit system-deps bench clean image lock dist dashboard

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
	$(BIN)/mypy --strict grafana/dashboard.py

unit: $(BIN)/pki-exporter
	$(BIN)/pytest -ra

bench: $(BIN)/pki-exporter
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
lock: $(BIN)/pki-exporter
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile \
	  --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --index-url https://pypi.org/simple \
	  --output-file requirements.lock pyproject.toml

## The wheel and the sdist in dist/, checked by twine
dist: $(BIN)/pki-exporter
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

## grafana/pki-exporter.json from grafana/dashboard.py, then the Kubernetes ConfigMap from it
dashboard: $(BIN)/pki-exporter
	$(BIN)/python grafana/dashboard.py
	$(BIN)/python scripts/generate_kubernetes_monitoring.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache test-output
