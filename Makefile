# Two entry points, each setting up a project-local virtual environment on first use:
#   make run    generate the synthetic data, train the CPU model, evaluate, print the metrics
#   make test   run the test suite
# The environment is (re)installed only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= configs/main.yaml
ARGS ?=

.PHONY: run test setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python train.py --config $(CONFIG) $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
