# Two commands on a fresh machine:  make run  (the workflow on the embedded demo dataset)
#                                   make test (the test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# Rules call `python -m meli.<module>`: the venv's python must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-unit lint dry-run report bench predict report-shots clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	@touch $@

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) $(ARGS)
	@echo "Report: $(CURDIR)/results/report.html"

# Two pytest-xdist workers, a test file per worker (--dist loadfile: a file's module fixtures are
# built once); much of the suite waits on subprocesses (snakemake, SLURM's queue), so two workers
# on 2 cores finish sooner. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(VENV)/.installed
	bash tests/install_system_deps.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The unit tests only (no snakemake runs, no SLURM): a few minutes on 2 cores.
test-unit: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not workflow and not slurm" $(PYTEST_ARGS)

# snakemake's own linter, then ruff (pinned in requirements.txt; pyproject's [tool.ruff]), and the
# complexity gate on scripts/: mccabe (C901, default threshold 10) and at most 8 parameters a function.
lint: $(VENV)/.installed
	$(BIN)/snakemake --lint
	$(BIN)/ruff check scripts tests benchmarks
	$(BIN)/ruff check scripts --select C901,PLR0913 --config 'lint.pylint.max-args = 8'

dry-run: $(VENV)/.installed
	$(BIN)/snakemake -n --configfile config/meli2019.yaml

# Progress of the sweep in this directory (done / running / failed / left, ETA) and the tables and
# report from what has finished so far; safe while a sweep runs (see docs/design.md).
report: $(VENV)/.installed
	PYTHONPATH=$(CURDIR)/scripts $(BIN)/python -m meli.sweep report $(ARGS)

predict: $(VENV)/.installed
	$(BIN)/meli-predict $(ARGS)

# Screenshots of the report at 1400 px and 390 px (headless Chromium) in bench-out/report-shots/:
# a synthetic 20-run sweep, plus results/report.html when it exists. Fails on sideways overflow
# or a console message.
report-shots: $(VENV)/.installed
	PYTHONPATH=scripts $(BIN)/python -m tests.report_pages --out bench-out/report-shots
	@if [ -f results/report.html ]; then PYTHONPATH=scripts $(BIN)/python -m tests.report_pages \
		--out bench-out/report-shots --report results/report.html; fi

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf results/*/ results/report.html .snakemake
