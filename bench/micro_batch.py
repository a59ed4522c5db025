"""LoRA SFT on a CPU: the whole batch in one forward/backward pass vs micro-batches of a few rows accumulated to the
same optimizer step (``PhaseConfig.cpu_micro_batch_size``), measured in the same run.

    python bench/micro_batch.py [--model smollm2-135m] [--steps 8] [--batch-size 8] [--micro 0 2]
                                [--max-length 320] [--top-layers 20]

Each setting trains in a fresh subprocess (its own peak RSS, the demo's malloc tunables) through the project's own
trainer (``ml.training.lora_sft.train_lora_sft``): the same base, seed, rows (prompt: the first lines of a function
of the standard library; completion: the rest, cut to fit ``--max-length``) and the same optimizer steps. Last line:
{"settings": {micro: {"s_per_step", "peak_rss_mb", "train_loss"}}, "speedup": whole / micro time per step for each
micro, "rss_ratio": ..., ...}. The first optimizer step is left out of the time (warm-up).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import ast
import json
import os
import resource
import subprocess
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit

from ml.memory import bounded_malloc_env


def stdlib_pairs(n: int) -> list[tuple[str, str]]:
    """(signature + docstring, body) of the standard library's first ``n`` functions with a docstring."""
    import inspect

    pairs: list[tuple[str, str]] = []
    for path in sorted(Path(inspect.getfile(ast)).parent.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and node.body[1:]:
                text = ast.get_source_segment(source, node) or ""
                lines = text.splitlines(keepends=True)
                head = node.body[1].lineno - node.lineno
                pairs.append(("".join(lines[:head]), "".join(lines[head:])[:1200]))
                if len(pairs) == n:
                    return pairs
    return pairs


def worker(args: argparse.Namespace) -> None:
    import torch

    from ml.compute import resolve_compute
    from ml.models.loading import load_tokenizer
    from ml.training.lora_sft import train_lora_sft
    from ml.training.sft_trainer import PhaseConfig

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    folder = Path(args.folder)
    tokenizer = load_tokenizer(folder)
    cfg = PhaseConfig(max_steps=args.steps, learning_rate=1e-3, per_device_train_batch_size=args.batch_size,
                      warmup_steps=1, logging_steps=1, save_steps=10_000, max_length=args.max_length,
                      lora_top_layers=args.top_layers, trainable_embeddings="none", separator="", add_eos=True,
                      cpu_micro_batch_size=args.micro[0], seed=0)
    with tempfile.TemporaryDirectory(prefix="astforge-micro-batch-") as tmp:
        result = train_lora_sft(folder, tokenizer, stdlib_pairs(args.batch_size * args.steps * 2), [],
                                Path(tmp) / "out", Path(tmp) / "work", cfg, resolve_compute(device="cpu"))
    print(json.dumps({"s_per_step": round(result.step_seconds, 3), "train_loss": round(result.train_loss, 4),
                      "real_token_fraction": round(result.real_token_fraction, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a packaged GGUF model (ml.models.gguf)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro", type=int, nargs="+", default=[0, 2], help="rows per pass; 0: the whole batch")
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--top-layers", type=int, default=20)
    parser.add_argument("--folder", default="")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from ml.models.gguf import convert_gguf, packaged_gguf

    settings = {}
    with tempfile.TemporaryDirectory(prefix="astforge-micro-batch-") as tmp:
        folder = Path(tmp) / "model"
        convert_gguf(packaged_gguf(args.model), folder)
        for micro in args.micro:
            command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--batch-size",
                       str(args.batch_size), "--max-length", str(args.max_length), "--top-layers",
                       str(args.top_layers), "--micro", str(micro), "--folder", str(folder)]
            done = subprocess.run(command, env=bounded_malloc_env(), capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"micro-batch {micro} failed:\n{done.stderr[-3000:]}")
            settings[micro] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"micro-batch {micro or args.batch_size}: {settings[micro]}", file=sys.stderr)
    whole = settings.get(0)
    result = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
              "top_layers": args.top_layers, "threads": os.cpu_count(), "settings": settings}
    if whole is not None:
        result["speedup"] = {m: round(whole["s_per_step"] / s["s_per_step"], 3) for m, s in settings.items() if m}
        result["rss_ratio"] = {m: round(s["peak_rss_mb"] / whole["peak_rss_mb"], 3) for m, s in settings.items() if m}
    emit(result)


if __name__ == "__main__":
    main()
