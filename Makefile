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
# The AVX-512 / VNNI extensions this CPU advertises (+25% prompt throughput here), never AMX: not -march=native,
# since a CPU that advertises AMX inside a VM can fault on it (SIGILL on q8_0 here). AVX2/FMA/F16C (x86-64-v3) is the
# baseline; LLAMA_CMAKE_ARGS adds to it (e.g. -DGGML_CUDA=ON on a GPU machine). The multimodal library is not built.
# pip caches the built wheel: after changing the flags, `pip cache remove llama_cpp_python` first.
LLAMA_CMAKE_CPU := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' \
	| grep -x -E 'avx512f|avx512vbmi|avx512_vnni|avx512_bf16|avx_vnni' | tr a-z A-Z | sed -e 's/^AVX512F$$/AVX512/' \
	-e 's/^AVX512VBMI$$/AVX512_VBMI/' -e 's/.*/-DGGML_&=ON/' | tr '\n' ' ')
export DAGSTER_HOME ?= $(CURDIR)/.dagster
export ASTFORGE_HOME ?= $(CURDIR)/.astforge

.PHONY: install demo test test-fast ui lint bench clean catalog-rebuild serve gpu-check

$(STAMP): pyproject.toml Makefile scripts/install.sh
	@PYTHON="$(PYTHON)" VENV="$(VENV)" LLAMA_CPP_PYTHON="$(LLAMA_CPP_PYTHON)" LLAMA_CPP_DIR="$(LLAMA_CPP_DIR)" \
		LLAMA_CMAKE_FLAGS="$(LLAMA_CMAKE_BASE) $(LLAMA_CMAKE_CPU) $(LLAMA_CMAKE_ARGS)" bash scripts/install.sh
	@touch $(STAMP)

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
	# the malloc tunables of ml/memory.py (the demo sets them itself): bounded memory in the runs the UI launches
	MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=8388608 MALLOC_ARENA_MAX=2 \
		$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	for lang in python javascript java; do $(PY) bench/codec.py --lang $$lang; $(PY) bench/ingest.py --lang $$lang; done
	$(PY) bench/constrained.py
	$(PY) bench/train_throughput.py

# On a CUDA machine (< 10 min, one GPU): a short bf16 / 4-bit training run per base (packaged + the full profile's
# where the hub or ASTFORGE_MODEL_MIRROR serves them), unsloth where installed, llama.cpp's CUDA build; one JSON line.
# Without CUDA it says so and exits 0. docs/gpu.md.
gpu-check: install
	$(PY) bench/gpu_check.py

# Recreate catalog.duckdb from the artifact folders' manifests (the old file is kept beside it).
catalog-rebuild: install
	$(PY) -m resources.catalog_rebuild

clean:
	rm -rf $(ASTFORGE_HOME) $(DAGSTER_HOME)
