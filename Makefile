# Two commands on a fresh machine:  make run  (the workflow on the embedded demo dataset)
#                                   make test (the test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# Rules call `python -m meli.<module>`: the venv's python must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-unit lint dry-run bench predict clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	@touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) $(ARGS)
	@echo "Report: $(CURDIR)/results/report.html"

test: $(VENV)/.installed
	bash tests/install_system_deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tests only (no snakemake runs, no SLURM): a few minutes on 2 cores.
test-unit: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not workflow and not slurm" $(PYTEST_ARGS)

# snakemake's own linter, then ruff (pyproject's [tool.ruff]) when it is installed.
lint: $(VENV)/.installed
	$(BIN)/snakemake --lint
	@if command -v ruff >/dev/null; then ruff check scripts tests benchmarks; \
	else echo "ruff not installed: skipped (pip install ruff)"; fi

dry-run: $(VENV)/.installed
	$(BIN)/snakemake -n --configfile config/meli2019.yaml

predict: $(VENV)/.installed
	$(BIN)/meli-predict $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf results/*/ results/report.html .snakemake
