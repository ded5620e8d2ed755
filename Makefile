# The two commands of the README: `make demo` (the main job, offline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-dev demo test test-slow lint

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh --dev

demo: setup
	@scripts/demo.sh

test: setup-dev
	$(PY) -m pytest -q

test-slow: setup-dev
	$(PY) -m pytest -q -m slow

lint: setup-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy .
