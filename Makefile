# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SPACE   ?= tune_spaces/smoke.yaml
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0

.PHONY: run test lint format bench install clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The smoke sweep on an embedded local Ray (afresh each time), then the frontier report (its
# path is printed last).
run: install
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m ray_mtl.tune --space $(SPACE) --overwrite

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Every benchmark; each writes bench/results/<name>.json (commit them: README's table reads them).
BENCHES := prepare train_throughput schedule disk tree_vs_naive search
bench: install
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.train_throughput --kind lm

clean:
	rm -rf $(VENV) runs results bench/out
