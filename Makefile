# Two entry points do everything on a fresh machine: `make run` and `make test` (see README).
VENV ?= .venv
BIN := $(VENV)/bin
# disk the venv needs, in GB (6.8 measured: torch 2.14.1's CUDA build is 5.5 of it)
INSTALL_GB ?= 7
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install run captcha test lint format mlflow-ui clean-outputs gpu-check gpu-wheels

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null || { echo "Java is needed for pycocoevalcap: apt-get install default-jre-headless"; exit 1; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); [ $$free -ge $(INSTALL_GB) ] || \
	  echo "warning: $$free GB free in $(CURDIR); the venv takes ~$(INSTALL_GB) GB (torch's CUDA build): pip may fail with 'No space left on device'" >&2
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Run the whole pipeline on the embedded default dataset (dvc repro).
run: install
	dvc repro
	@echo; cat reports/comparison.md
	@echo; echo "Every score: reports/decoders/<decoder>/metrics.json; curves: dvc plots show"

## The CAPTCHA reader (docs/captcha.md): its own DAG in pipelines/captcha, the same stages.
## It registers into the project's one MLflow store, the repository's mlflow.db, as every
## pipeline and command run anywhere in the repository does.
captcha: install
	cd pipelines/captcha && dvc repro
	cd pipelines/captcha && dvc metrics show

## The test suite (unit + one end-to-end DAG run on a tiny config).
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src stages flows tests benchmarks gpu_check
	$(BIN)/ruff format --check src stages flows tests benchmarks gpu_check

format: install
	$(BIN)/ruff format src stages flows tests benchmarks gpu_check
	$(BIN)/ruff check --fix src stages flows tests benchmarks gpu_check

## What the project does on CUDA, checked in <= 5 minutes into reports/gpu-check.md
## (docs/gpu-check.md). No install step: the venv's Python if `make install` made one, else
## python3 as it is (or GPU_PYTHON=...); pure-Python packages it lacks come from gpu_check/wheels.
## Without CUDA it says so in one line and exits 0.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	@PYTHONPATH=$(CURDIR)/src:$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH)) $(GPU_PYTHON) -m gpu_check

## Download the wheels of gpu_check/requirements.txt into gpu_check/wheels (needs PyPI; commit them).
gpu-wheels:
	rm -f gpu_check/wheels/*.whl
	$(GPU_PYTHON) -m pip download --quiet --no-deps --only-binary=:all: \
		--dest gpu_check/wheels -r gpu_check/requirements.txt
	@du -ch gpu_check/wheels/*.whl

## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) against the repo's store (no job workers: ~2 GB less).
MLFLOW_PORT ?= 5000
mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
		--workers 1 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts

## Prefect on this machine (scripts/prefect-local.sh): server on 127.0.0.1 with SQLite in
## .prefect/, the process work pool, the `gpu` concurrency limit, deployments, a worker.
.PHONY: prefect-up prefect-down prefect-server prefect-setup prefect-deploy prefect-worker
prefect-up: install
	scripts/prefect-local.sh up

prefect-down:
	scripts/prefect-local.sh down

prefect-server prefect-setup prefect-deploy prefect-worker: install
	scripts/prefect-local.sh $(@:prefect-%=%)
