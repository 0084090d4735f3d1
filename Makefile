# DermaOps developer commands. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export DERMAOPS_HOME ?= $(CURDIR)/.dermaops
export PYTHONUNBUFFERED := 1

.PHONY: venv demo demo-data ui monitor test test-fast test-infra infra-scan validate endpoint-status endpoint-stop bench bench-quality clean

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo-data: venv
	$(BIN)/dermaops demo-data

# The whole graph on the embedded local default: raw images -> live endpoint (auto-approved for the demo).
demo: venv demo-data $(DAGSTER_HOME)/dagster.yaml
	DERMAOPS_AUTO_APPROVE=true $(BIN)/dagster asset materialize -m dermaops_assets --select '*'
	$(BIN)/dermaops endpoint status

monitor: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m dermaops_assets --select 'inference_log,drift_report,model_quality_report,cost_report,labelling_queue'

ui: venv $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

validate: venv
	$(BIN)/dagster definitions validate -m dermaops_assets

# One pytest-xdist worker per core (tests/conftest.py pins each to its core), a test file's tests
# on one worker so its module fixtures are built once.
test: venv
	$(BIN)/pytest -q -rs --durations=25 -n auto --dist loadfile

test-fast: venv
	$(BIN)/pytest -q -rs -m "not slow" -n auto --dist loadfile

test-infra: venv
	$(BIN)/pytest -q -rs tests/infra tests/deploy

# checkov (Terraform, Dockerfiles) and hadolint, in their own venv (.venv-checkov/)
infra-scan:
	bash .ci/checkov

endpoint-status: venv
	$(BIN)/dermaops endpoint status

endpoint-stop: venv
	$(BIN)/dermaops endpoint stop

# Every benchmarks/*.py on the BENCH_RESULT protocol: one table, JSON in benchmarks/results/latest.json.
# `make bench QUICK=1` for small inputs, `make bench ONLY="ingest_scale ingest_preprocess"` for some.
bench: venv
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick) $(foreach n,$(ONLY),--only $(n))

# The real-data quality run (trains a model; not on the BENCH_RESULT protocol).
bench-quality: venv
	$(BIN)/python benchmarks/ham10000_quality.py

clean:
	-$(BIN)/dermaops endpoint stop
	rm -rf .dermaops .dagster_home/history .dagster_home/storage .dagster_home/schedules .dagster_home/logs
