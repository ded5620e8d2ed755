# The two commands of the README: `make demo` (the main job, offline; the quick profile where no models exist,
# DEMO_FULL=1 for the full recipe) and `make test`. `make train` trains the full recipe without the service.
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-dev demo train test test-slow lint

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh --dev

# the demo's clock starts with make, before the installs
demo train: export DEMO_T0 := $(shell date +%s)

demo: setup
	@scripts/demo.sh

train: setup
	@DEMO_FULL=1 DEMO_TRAIN_ONLY=1 scripts/demo.sh

test: setup-dev
	$(PY) -m pytest -q

test-slow: setup-dev
	$(PY) -m pytest -q -m slow

lint: setup-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy .
