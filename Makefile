# shrinkml: every stage of the pipeline is a target; `make pipeline` runs them all in order.
SHELL := /bin/bash
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORPUS := data/synthetic

.PHONY: setup test lint data corpus prepare pipeline bench clean-cache

## setup: virtual env with the project and its dev extras, plus the system check for the corpus text
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -n "$(PYTHON_BIN)" || { echo "setup: no python3.11 or python3 on PATH"; exit 1; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	bash scripts/setup_system.sh
	touch $(STAMP)

## test: the fast test suite (installs everything first when needed)
test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

## data: the embedded corpus, checked, with its tokenizer and feature cache
data: setup $(CORPUS)/corpus.json prepare
corpus: $(CORPUS)/corpus.json
$(CORPUS)/corpus.json: conf/corpus/synthetic.yaml | $(STAMP)
	$(PY) scripts/make_corpus.py
	$(PY) scripts/check_corpus.py $(CORPUS)
prepare: $(CORPUS)/corpus.json
	$(PY) scripts/prepare_data.py

## pipeline: every stage that exists so far (today: the data stage)
pipeline: data

## bench: the benchmark scripts (print their numbers)
bench: setup
	$(PY) benchmarks/data_pipeline.py

clean-cache:
	rm -rf cache/features
