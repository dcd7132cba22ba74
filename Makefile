# The two commands of the README:  make run   and   make test
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup run test lint
setup:
	@bash scripts/setup.sh

# Sets up, then runs the default job (the embedded synthetic subject through the tables).
run: setup
	$(BIN)/snakemake --cores $(CORES)

# Sets up, then checks the workflow (lint, format, dry run) and runs the test suite.
test: setup lint
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake -n --quiet rules
