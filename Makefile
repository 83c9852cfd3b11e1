# OCAD: two entry points. `make run` sets up and runs the main job; `make test` sets up and tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: setup run test ui clean-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# pip's notes about local wheel folders are noise here; real errors still fail the step
	$(BIN)/pip install -q -e '.[train,dev]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $@

setup: $(VENV)/.installed ## create .venv and install OCAD with the training stack and the test tools

run: setup ## materialize every asset (embedded SQLite storage in dagster_home/, data in data/)
	$(BIN)/python -m ocad_pipeline.launch --job ocad_pipeline_job
	$(BIN)/python -m ocad_pipeline.outputs

test: setup ## lint (ruff), type-check (mypy), then the whole test suite (installs Prometheus + Alertmanager if missing)
	$(BIN)/ruff check .
	$(BIN)/mypy
	scripts/ensure-prometheus.sh
	$(BIN)/pytest -q

ui: setup ## the Dagster UI and daemon on http://127.0.0.1:3000
	$(BIN)/dg dev --host 127.0.0.1 --port 3000

clean-data: ## remove materialized data, models and run storage
	rm -rf data/raw data/processed data/models data/tuning data/reports
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
