# The README's commands. Each target sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: setup prerequisites fit test test-all data lint bench report

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

# What the tests need besides Python: a C compiler (the CPU kernels) and PostgreSQL's server programs (the study
# server tests start their own). Installed with apt-get where missing; elsewhere it says what to install.
prerequisites:
	@missing=""; \
	command -v "$${CC:-cc}" >/dev/null || missing="$$missing gcc"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "the tests need:$$missing (install them, then run make test again)" >&2; exit 2; }; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo "installing$$missing with apt-get"; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup prerequisites
	$(PY) -m pytest

test-all: setup prerequisites
	$(PY) -m pytest -m ""

data: setup
	$(PY) cli.py data build --ticker GSPC --tier a25 --version 1
	$(PY) cli.py data build --ticker GSPC --tier c --version 1
	$(PY) cli.py data verify
	$(PY) cli.py data list

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: setup
	$(PY) bench/bench_data.py
	$(PY) bench/bench_train.py --fit
