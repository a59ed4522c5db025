"""Where and how a model trains: device, precision, 4-bit quantization and training backend.

``resolve_compute`` turns user requests (each ``"auto"`` by default) into a concrete
:class:`ComputePlan`, or raises ``ValueError`` with the reason when a request cannot be honoured
on this machine (e.g. 4-bit without CUDA or without bitsandbytes).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

_DEVICES = ("auto", "cuda", "cpu")
_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_QUANT = ("auto", "4bit", "none")
_BACKENDS = ("auto", "hf", "unsloth")


@dataclass
class ComputePlan:
    device: str  # "cuda" | "cpu"
    dtype: str  # "bf16" | "fp16" | "fp32"
    quantize_4bit: bool
    # "hf" (transformers/peft/TRL) | "unsloth" (CUDA + the unsloth package: the fresh LoRA SFT loads through
    # FastLanguageModel, ml/training/unsloth_backend.py; the trainers it cannot serve refuse it)
    backend: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 / AMX): there, bf16 autocast over fp32 weights
    trains a pretrained model about twice as fast as fp32; elsewhere it is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    value = str(value).lower()
    aliases = {
        "bfloat16": "bf16",
        "float16": "fp16",
        "float32": "fp32",
        "4-bit": "4bit",
        "nf4": "4bit",
        "off": "none",
        "false": "none",
        "transformers": "hf",
    }
    value = aliases.get(value, value)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


_CHOICES = {"device": _DEVICES, "precision": _PRECISIONS, "quantization": _QUANT, "backend": _BACKENDS}


def check_choice(what: str, value: str) -> str:
    """``value`` of one request (``what``: device, precision, quantization or backend), aliases resolved; a
    ValueError listing the known names otherwise. Only the name: whether this machine can honour it is
    :func:`resolve_compute`'s question, asked when a step plans its compute."""
    return _check(value, _CHOICES[what], what)


def resolve_compute(
    device: str = "auto", precision: str = "auto", quantization: str = "auto", backend: str = "auto"
) -> ComputePlan:
    device = _check(device, _DEVICES, "device")
    precision = _check(precision, _PRECISIONS, "precision")
    quantization = _check(quantization, _QUANT, "quantization")
    backend = _check(backend, _BACKENDS, "backend")

    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    elif device == "cuda" and not cuda:
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False on this machine")

    on_cuda = device == "cuda"
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        precision = "bf16" if bf16_ok else ("fp16" if on_cuda else "fp32")
    elif precision == "bf16" and on_cuda and not bf16_ok:
        raise ValueError(
            "precision='bf16' requested but this GPU does not support bfloat16; use fp16 or auto"
        )
    elif precision == "bf16" and not on_cuda and not cpu_has_bf16():
        raise ValueError(
            "precision='bf16' on CPU needs bfloat16 units (AVX512-BF16 or AMX); this CPU has neither: use fp32"
        )
    elif precision == "fp16" and not on_cuda:
        raise ValueError(
            "precision='fp16' requires CUDA (fp16 mixed precision is not supported for CPU training)"
        )

    bnb = _importable("bitsandbytes")
    if quantization == "auto":
        quantize_4bit = on_cuda and bnb
    elif quantization == "4bit":
        if not on_cuda:
            raise ValueError("quantization='4bit' requires CUDA (bitsandbytes 4-bit kernels); device is cpu")
        if not bnb:
            raise ValueError(
                "quantization='4bit' requires the bitsandbytes package (pip install bitsandbytes)"
            )
        quantize_4bit = True
    else:
        quantize_4bit = False

    # auto stays hf: the unsloth path is untested until a GPU runs it (docs/gpu.md), so no run gets it unasked.
    if backend == "unsloth":
        if not on_cuda:
            raise ValueError(
                "backend 'unsloth' requires CUDA (unsloth's kernels run on NVIDIA GPUs only) and device is cpu: "
                "use backend 'hf' (or 'auto', which resolves to 'hf')"
            )
        if not _importable("unsloth"):
            raise ValueError(
                "backend 'unsloth' requires the unsloth package (pip install -e '.[gpu]' on the CUDA machine), "
                "which is not importable here: use backend 'hf' (or 'auto', which resolves to 'hf')"
            )
    else:
        backend = "hf"

    return ComputePlan(device=device, dtype=precision, quantize_4bit=quantize_4bit, backend=backend)
