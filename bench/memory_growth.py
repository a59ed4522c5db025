"""Resident memory across many LoRA training steps of varying shapes: glibc's default malloc vs the tunables the
demo sets (ml/memory.py: a fixed mmap threshold, so large tensors are returned to the OS when freed).

    python bench/memory_growth.py [--model smollm2-135m|tiny] [--steps 40] [--batch-size 4] [--max-length 384]

Each variant runs in a fresh subprocess (malloc reads its tunables at start): the same model, seed, LoRA and the
same sequence of batch shapes (lengths drawn between 32 and --max-length, as packing-free SFT batches vary). It
records RSS after every step. Last line: {"baseline_rss_growth_mb", "tuned_rss_growth_mb", "baseline_peak_rss_mb",
"tuned_peak_rss_mb", "baseline_s_per_step", "tuned_s_per_step", "time_ratio", ...}; growth = RSS at the last step
minus RSS after the first step (the steady state should not keep climbing).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import json
import os
import subprocess
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit

from ml.memory import MALLOC_TUNABLES


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _model(name: str, folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    if name == "tiny":
        from transformers import AutoConfig

        cfg = AutoConfig.for_model("qwen2", vocab_size=8192, hidden_size=256, intermediate_size=768,
                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg), 8192
    from ml.models.gguf import convert_gguf, packaged_gguf

    if not (folder / "config.json").is_file():
        convert_gguf(packaged_gguf(name), folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, model.config.vocab_size


def worker(args: argparse.Namespace) -> None:
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    base, vocab = _model(args.model, Path(args.folder))
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                "o_proj"], task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rng = random.Random(0)
    rss, times = [], []
    for _ in range(args.steps):
        length = rng.randint(32, args.max_length)
        ids = torch.randint(0, vocab, (args.batch_size, length))
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        rss.append(round(_rss_mb(), 1))
    print(json.dumps({"rss_mb": rss, "s_per_step": sum(times[1:]) / max(1, len(times) - 1)}))


def run_variant(args: argparse.Namespace, env_extra: dict[str, str], folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_TUNABLES}
    env.update(env_extra)
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--folder", str(folder)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--folder", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="astforge-memory-bench-") as tmp:
        folder = Path(tmp) / "model"
        baseline = run_variant(args, {}, folder)
        tuned = run_variant(args, dict(MALLOC_TUNABLES), folder)
    result = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length}
    for name, run in (("baseline", baseline), ("tuned", tuned)):
        rss = run["rss_mb"]
        result[f"{name}_rss_growth_mb"] = round(rss[-1] - rss[0], 1)
        result[f"{name}_peak_rss_mb"] = max(rss)
        result[f"{name}_s_per_step"] = round(run["s_per_step"], 3)
        result[f"{name}_rss_mb_every_10"] = rss[::10]
    result["time_ratio"] = round(result["tuned_s_per_step"] / result["baseline_s_per_step"], 3)
    result["tunables"] = MALLOC_TUNABLES
    emit(result)


if __name__ == "__main__":
    main()
