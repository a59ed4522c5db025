"""llama.cpp's tools in a subprocess. ``convert`` runs llama.cpp's ``convert_hf_to_gguf.py`` (vendored by the
llama-cpp-python sdist; ``make install`` unpacks it) with one fallback: a byte-level BPE vocabulary llama.cpp does
not know by its hash (the ``tiny:`` tokenizers astforge trains) gets the pre-tokenizer its ``tokenizer.json``
describes when llama.cpp has that one (GPT-2's, Qwen2's); any other unknown tokenizer still fails, naming the
reason. ``quantize`` runs llama.cpp's quantizer (``llama_model_quantize``, through llama-cpp-python).

    python -m ml.models.gguf_convert convert LLAMA_CPP_DIR MODEL_DIR --outtype f16 --outfile OUT.gguf
    python -m ml.models.gguf_convert quantize SRC.gguf DST.gguf FTYPE THREADS

Run by :func:`ml.models.gguf_export.convert_to_gguf` and :func:`ml.models.gguf_export.quantize_gguf`: the converter
edits ``sys.path`` and the logging setup, the quantizer prints a line per tensor from C, and a crash in either must
not take the caller down.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

# Qwen2's pre-tokenizer regex (transformers' Qwen2Tokenizer writes it; llama.cpp's "qwen2" pre-tokenizer is the same)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def known_pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's name for the pre-tokenizer ``tokenizer.json`` describes, when it is one llama.cpp has: GPT-2's
    (one ``ByteLevel`` step with its regex) or Qwen2's (its regex split, then ``ByteLevel`` without a regex)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and (steps[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)):
        return "qwen2"
    return None


def quantize(src: str, dst: str, ftype: int, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, threads
    status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")


def convert(argv: list[str]) -> None:
    llama_cpp_dir, model_dir = Path(argv[0]), Path(argv[1])
    script = llama_cpp_dir / "convert_hf_to_gguf.py"
    # llama.cpp's conversion package and the gguf-py it is written against (newer than PyPI's gguf of the same
    # version number), ahead of the installed gguf
    sys.path[:0] = [str(llama_cpp_dir), str(llama_cpp_dir / "gguf-py")]
    import conversion.base as base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            name = known_pre_tokenizer(Path(self.dir_model))
            if name is None:
                raise
            base.logger.warning(f"unknown BPE vocabulary hash; its tokenizer.json pre-tokenizes as {name!r}")
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), str(model_dir), *argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "convert":
        convert(argv[1:])
    elif len(argv) == 5 and argv[0] == "quantize":
        quantize(argv[1], argv[2], int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
