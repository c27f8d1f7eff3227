# ltcls: `make train` runs the default job; `make test` the default test suite (every change; no `slow` tests),
# `make test-all` everything (what CI runs); each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/digits_lt_ce.yaml
ARGS ?=

.PHONY: train test test-all lint bench clean-venv

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

train: $(BIN)/.installed
	$(BIN)/ltcls-train --config $(CONFIG) $(ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check ltcls tests benchmarks tools

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_losses.py
	$(BIN)/python benchmarks/bench_stage2.py
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_heads.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_feature_epoch.py
	$(BIN)/python benchmarks/bench_decoupled_gumbel.py
	$(BIN)/python benchmarks/bench_lvis_eval.py
	$(BIN)/python benchmarks/bench_peft.py
	$(BIN)/python benchmarks/bench_export.py

clean-venv:
	rm -rf $(VENV)
