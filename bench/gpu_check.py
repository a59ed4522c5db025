"""GPU check: the `full` profile's path on a CUDA machine, in under 10 minutes on one GPU.

    python bench/gpu_check.py [--steps 10] [--budget-s 540]      (make gpu-check)

Steps, each timed and caught on its own (a failure is reported, the next step still runs):
- ``train:<base>``: a short LoRA SFT run through the platform's trainer (ml.training.sft.train_lora_sft) on FIM rows,
  bf16, 4-bit where bitsandbytes is installed, for the packaged SmolLM2-135M and, where the hub (or
  ASTFORGE_MODEL_MIRROR) serves them, each full-profile base: Qwen2.5-0.5B (AST-first), Qwen2.5-Coder-0.5B
  (autocomplete, SRL), Gemma 3 270M (DSL);
- ``unsloth:<base>``: the same trainer with backend ``unsloth`` (ml/training/unsloth_backend.py: FastLanguageModel
  loads the base, 4-bit where bitsandbytes is installed, and adds the LoRA), where unsloth is installed; the adapter it
  saves is then loaded back through the platform's own loader (``adapter_loads``);
- ``llama_cpp_cuda``: whether llama-cpp-python was built with CUDA (``LLAMA_CMAKE_ARGS=-DGGML_CUDA=ON``) and a
  generation on the GPU with the packaged GGUF (the serving bench's engine).
Last line: one JSON object {"cuda", "device", "steps": [{"step", "ok", "tokens_per_s", "peak_gpu_mb", "seconds",
"error"}], "passed", "failed"}. Without CUDA it says so and exits 0 having run nothing.

Untested until a GPU runs it: written on a CPU-only machine (the stand-in tests cover the CPU half of the path).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import tempfile
import time
import traceback

from _common import emit

FULL_BASES = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-Coder-0.5B", "unsloth/gemma-3-270m-it")


def _rows(n: int = 64) -> list[tuple[str, str]]:
    from ml.autocomplete.fim import fim_prompt

    rows = []
    for i in range(n):
        prefix, middle, suffix = f"def add_{i}(a, b):\n    ", f"return a + b + {i}\n", f"\n\nprint(add_{i}(1, 2))\n"
        rows.append((fim_prompt(prefix, suffix), middle))
    return rows


def _packaged_folder(work: Path) -> str:
    from ml.models.gguf import convert_gguf, packaged_gguf

    folder = work / "smollm2-135m"
    if not (folder / "config.json").is_file():
        convert_gguf(packaged_gguf("smollm2-135m"), folder)
    return str(folder)


def _train(base_dir: str, work: Path, steps: int, backend: str) -> dict:
    import torch

    from ml.autocomplete.recipe import fim_tokenizer
    from ml.compute import resolve_compute
    from ml.training.base_model import build_base_model, save_base_model
    from ml.training.lora_sft import train_lora_sft
    from ml.training.sft_trainer import PhaseConfig

    plan = resolve_compute(device="cuda", precision="bf16", quantization="auto", backend=backend)
    tok = fim_tokenizer(base_dir)
    folder = save_base_model(build_base_model(base_dir, tok, plan=None), tok, work / "base")
    cfg = PhaseConfig(max_steps=steps, per_device_train_batch_size=8, learning_rate=2e-4, warmup_steps=1,
                      logging_steps=1, eval_steps=steps, save_steps=steps, max_length=256)
    rows = _rows()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_lora_sft(folder, tok, rows, [], work / "out", work / "ckpt", cfg, plan)
    seconds = time.perf_counter() - started
    tokens = sum(len(tok(p + c)["input_ids"]) for p, c in rows[: steps * 8])
    record = {"tokens_per_s": round(tokens / seconds, 1),
              "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20),
              "quantize_4bit": plan.quantize_4bit, "dtype": plan.dtype, "backend": plan.backend,
              "final_loss": _last_loss(result)}
    if backend == "unsloth":
        from ml.models.loading import load_adapter

        # the promise: what unsloth trained is a plain PEFT adapter the rest of the platform loads
        load_adapter(folder, result.out_dir, resolve_compute(device="cuda", quantization="none"))
        record["adapter_loads"] = True
    return record


def _last_loss(result) -> float | None:
    losses = [v for _, m, v in getattr(result, "curve", []) if m == "loss"]
    return losses[-1] if losses else None


def _llama_cpp_cuda(work: Path) -> dict:
    import llama_cpp

    from ml.models.gguf import packaged_gguf

    if not llama_cpp.llama_supports_gpu_offload():
        raise RuntimeError("llama-cpp-python was built without CUDA: rebuild with LLAMA_CMAKE_ARGS=-DGGML_CUDA=ON "
                           "(pip cache remove llama_cpp_python first)")
    llm = llama_cpp.Llama(model_path=str(packaged_gguf("smollm2-135m").path), n_gpu_layers=-1, verbose=False)
    started = time.perf_counter()
    out = llm("def fibonacci(n):", max_tokens=64, temperature=0.0)
    seconds = time.perf_counter() - started
    return {"tokens_per_s": round(out["usage"]["completion_tokens"] / seconds, 1)}


def _hub_or_mirror(repo_id: str) -> str | None:
    from ml.models.base_ref import BaseModelError, resolve_base_model

    try:
        return resolve_base_model(repo_id).loadable
    except BaseModelError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=540.0, help="steps that would start after this are skipped")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA on this machine (torch.cuda.is_available() is False): nothing run")
        emit({"cuda": False, "steps": [], "passed": 0, "failed": 0})
        return 0
    import importlib.util

    begun = time.perf_counter()
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        plan: list[tuple[str, object]] = [("train:smollm2-135m", lambda w: _train(_packaged_folder(work), w,
                                                                                    args.steps, "hf"))]
        for repo_id in FULL_BASES:
            plan.append((f"train:{repo_id}", lambda w, r=repo_id: _train(_need(r), w, args.steps, "hf")))
        if importlib.util.find_spec("unsloth") is not None:
            plan.append(("unsloth:Qwen/Qwen2.5-Coder-0.5B",
                         lambda w: _train(_need("Qwen/Qwen2.5-Coder-0.5B"), w, args.steps, "unsloth")))
        plan.append(("llama_cpp_cuda", _llama_cpp_cuda))
        for name, run in plan:
            if time.perf_counter() - begun > args.budget_s:
                steps.append({"step": name, "ok": None, "error": "skipped: over the time budget"})
                continue
            folder = work / name.replace("/", "_").replace(":", "_")
            started = time.perf_counter()
            try:
                record = {"step": name, "ok": True, **run(folder)}
            except _Unavailable as exc:
                record = {"step": name, "ok": None, "error": f"skipped: {exc}"}
            except Exception as exc:  # a failing step is the finding: report it, run the next
                record = {"step": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "trace": traceback.format_exc(limit=3)[-800:]}
            record["seconds"] = round(time.perf_counter() - started, 1)
            steps.append(record)
            torch.cuda.empty_cache()
    emit({"cuda": True, "device": torch.cuda.get_device_name(0), "steps": steps,
          "passed": sum(s["ok"] is True for s in steps), "failed": sum(s["ok"] is False for s in steps)})
    return 1 if any(s["ok"] is False for s in steps) else 0


class _Unavailable(RuntimeError):
    """A base neither the hub nor the mirror serves: skipped, not failed."""


def _need(repo_id: str) -> str:
    loadable = _hub_or_mirror(repo_id)
    if loadable is None:
        raise _Unavailable(f"{repo_id}: no hub access and not in ASTFORGE_MODEL_MIRROR")
    return loadable


if __name__ == "__main__":
    sys.exit(main())
