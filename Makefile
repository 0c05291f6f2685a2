# One-command setup: every target creates .venv (if needed) and installs rloss
# with its extras into it; nothing else is required on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rloss-installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --progress-bar off -e ".[train,dev]"
	touch $(STAMP)

## Run the offline demo: weak vs regularized vs full supervision on built-in data.
demo: $(STAMP)
	$(BIN)/rloss demo $(ARGS)

## Run the whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(ARGS)

lint: $(STAMP)
	$(BIN)/python -m ruff check .

## Speed and memory benchmarks (see benchmarks/RESULTS.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
