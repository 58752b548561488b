# The README's commands. Each target sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: setup fit test test-all data lint bench report study

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)    # pinned first: an open torch requirement pulls a CUDA build
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

fit: setup
	$(PY) cli.py fit --config configs/2M.yaml

report: setup
	$(PY) cli.py report

study: setup    # the answer: every fit, then the tests, then results/answer/ (rerun to resume)
	$(PY) cli.py study --config configs/study/answer.yaml

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""

data: setup
	$(PY) cli.py data build --ticker GSPC --tier a25 --version 1
	$(PY) cli.py data build --ticker GSPC --tier c --version 1
	$(PY) cli.py data verify
	$(PY) cli.py data list

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports    # the layer rules (pyproject.toml, docs/design.md)

bench: setup
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py --fit
