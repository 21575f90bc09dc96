# The two commands a newcomer runs: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: venv demo prepare-demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

prepare-demo: $(STAMP)
	$(BIN)/miir prepare $(DATA)/amazon-beauty --out artifacts/beauty --overwrite
	$(BIN)/miir prepare $(DATA)/amazon-beauty --out artifacts/beauty-d --discard 0.5 --overwrite

# A short demo run with the default recipe: 8 epochs, about 4 minutes on 2 cores (MII training
# leaves the popularity level after about 4); converged runs: bench/recipe.py and bench/grids/.
demo: prepare-demo
	$(BIN)/miir train --data artifacts/beauty --out runs/demo --fields categories,brand,title --epochs 8 --overwrite
	$(BIN)/miir evaluate --run runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python bench/bench_prepare.py
	$(BIN)/python bench/bench_train.py --data artifacts/beauty

clean:
	rm -rf $(VENV) artifacts runs .pytest_cache .ruff_cache
