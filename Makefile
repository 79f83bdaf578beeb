# studylib: `make sweep`, `make ui`, `make report`. `make help` lists every target.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel; on a CUDA machine set TORCH=torch (or install torch into $(VENV) first).
TORCH ?= torch==2.13.0
# The default study: the MLP sweep + ablation, and the plain-vs-residual depth comparison.
EXPERIMENTS ?= experiments/default.toml experiments/depth.toml
ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup setup-browser setup-engines sweep ui report dashboard test test-slow test-browser test-engines faults lint format clean bench gpu-check

help: ## list the targets
	@echo "studylib: make TARGET [EXPERIMENTS=experiments/x.toml] [ARGS='--trials 50']"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## create .venv with studylib and its dev tools (installs only what is missing)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,charts]"
	touch $@

setup-browser: ## install Debian's chromium for the report's browser test (needs apt, root)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

sweep: setup ## run or resume the studies in $(EXPERIMENTS) on sqlite:///mlflow.db + optuna.journal
	for experiment in $(EXPERIMENTS); do $(BIN)/studylib sweep $$experiment $(ARGS) || exit $$?; done

ui: setup ## the MLflow UI over mlflow.db on http://127.0.0.1:5000
	$(BIN)/studylib ui $(ARGS)

report: setup ## write reports/index.html (open it first) and a page per study from MLflow
	$(BIN)/studylib report $(ARGS)

dashboard: setup ## optuna-dashboard over optuna.journal on http://127.0.0.1:8080
	$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[dashboard]"
	$(BIN)/studylib dashboard $(ARGS)

test: setup ## the default test suite (leaves out slow, gpu, engines and browser tests)
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: setup ## the slow tests only
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-browser: setup setup-browser ## real Chromium: every report page, and the MLflow UI under studylib ui
	STUDYLIB_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m browser $(ARGS)

setup-engines: setup ## Debian's Slurm + munge (apt, root) and the slurm and ray extras in .venv
	command -v slurmctld >/dev/null && command -v munged >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  slurmctld slurmd slurm-client munge)
	$(BIN)/python -m pip install --quiet -e ".[dev,slurm,ray]"

test-engines: setup-engines ## --launcher slurm|ray against a one-node Slurm and Ray started here
	STUDYLIB_REQUIRE_ENGINES=1 STUDYLIB_ENGINE_TIMES=bench/out/engine-times.jsonl \
	  $(BIN)/python -m pytest -q -m engines $(ARGS)

faults: setup ## kill, interrupt, diverge, crowd and cut off sweeps; print what was lost (must be 0)
	$(BIN)/python -m bench.faults $(ARGS)

bench: setup ## speed against the floor and the tutorial sweep (BENCH_ARGS=--quick: a few minutes)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m bench.bench $(BENCH_ARGS)

gpu-check: setup ## on a CUDA machine: gpu tests + benchmark, results under $OUT (or bench/out)
	PYTHON=$(BIN)/python ./bench/gpu-check.sh

lint: setup ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## ruff format and the safe ruff fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## delete generated results: mlflow.db, mlartifacts/, optuna.journal, the data cache, reports
	rm -rf mlflow.db mlflow.db-wal mlflow.db-shm mlartifacts optuna.journal *.studylib-lock .studylib-cache
	find reports -mindepth 1 ! -name README.md -exec rm -rf {} +
