# vl2prep: the two set-up commands are `make demo` and `make test`; both create .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstall when the project's dependencies or their exact versions change: the package for demo and bench,
# the test extra (pytest, ruff, a Ray cluster CLI, a local S3 server) on top of it for test and lint.
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
# The exact versions the tests ran on; pyproject.toml holds the ranges a user's environment may satisfy.
CONSTRAINTS := constraints.txt

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "vl2prep needs Python 3.11, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e .
	touch $@

$(TEST_INSTALLED): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[test]"
	touch $(INSTALLED) $@

install: $(INSTALLED)

demo: install
	$(BIN)/vl2prep tile
	$(BIN)/vl2prep pretokenize jobs/examples/pretokenize.yaml --overwrite
	$(BIN)/vl2prep validate out/example

test: $(TEST_INSTALLED) lint
	$(BIN)/python -m pytest

lint: $(TEST_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/tiling.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/sequences.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis out
