# Two commands for a fresh machine: `make run` (the whole pipeline on cpu-tiny) and `make test`.
# Both create or update the local virtualenv first; re-running them is safe.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PARAMS ?= params/cpu-tiny.yaml

.PHONY: run test lint env

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(VENV)/bin/python -m rlhfv_nb.evaluate.wordnet
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name rlhfv-nb --display-name "rlhfv-nb (.venv)" >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rlhfv-nb run $(PARAMS)

test: $(STAMP)
	$(VENV)/bin/ruff check --output-format concise rlhfv_nb tests bench tools
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check rlhfv_nb tests bench tools
